"""Console switches for command-line runs: silence the libraries' own logging and progress bars.

Called by the CLI before it dispatches and by worker processes the studies start (a fresh process
does not inherit the parent's logging settings). Nothing happens at import.
"""

from __future__ import annotations

__all__ = ["quiet_libraries"]


def quiet_libraries() -> None:
    """Show transformers' errors only, and none of its progress bars (weights loading, downloads)."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
