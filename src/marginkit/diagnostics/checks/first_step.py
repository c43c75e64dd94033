"""Monitor check `first_step`: step 1's loss equals the value the setup fixes before any update.

ln 2 for BT with a zero reward head and for sigmoid DPO with policy = reference; mean softplus(m) with
margins m; the loss's own value for IPO or hinge (docs/monitor.md has the table). A mismatch means the
setup is not what was meant (reference, masks, reward head, beta, loss variant).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from marginkit.diagnostics.checks.window import ACTION_HELP, Action, Finding, Window

__all__ = ["FirstStepConfig", "first_step"]


@dataclass
class FirstStepConfig:
    enabled: bool = field(default=True, metadata={"help": "Check step 1's loss against its expected initial value."})
    expected: float | None = field(
        default=None, metadata={"help": "Expected step-1 loss; None: the trainer's own value (ln 2 for DPO with "
                                "policy = reference; the zero-gap loss of the margins for an RM with a zero head)."})
    tolerance: float = field(default=0.02, metadata={"help": "Allowed |loss - expected| / max(1, |expected|)."})
    action: Action = field(default="warn", metadata={"help": ACTION_HELP})


def first_step(window: Window, cfg: FirstStepConfig) -> Finding | None:
    """Fires at step 1 when |loss - expected| > tolerance · max(1, |expected|); silent at any other step
    (a resumed run cannot observe its initial loss) and when no expected value is known.

    `window.expected_initial_loss` is the expected value (the monitor puts `cfg.expected` there when set).
    """
    step, m = window.now
    if step != 1 or "loss" not in m:
        return None
    expected = window.expected_loss(m)
    if expected is None or abs(m["loss"] - expected) <= cfg.tolerance * max(1.0, abs(expected)):
        return None
    return Finding({"loss": m["loss"], "expected": expected})
