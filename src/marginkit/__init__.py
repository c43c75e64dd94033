"""marginkit: margin-aware preference learning (reward models and DPO-family policies)."""

__version__ = "0.1.0"
__all__ = ["__version__"]
