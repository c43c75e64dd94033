"""The experiment trackers `train.report_to` names, checked at start: "none" means none, a missing package fails.

Accelerate only warns when a named tracker's package is missing and then logs nothing to it, so a run
meant for TensorBoard would end with no TensorBoard logs. TRL users write `report_to=none` (the
transformers spelling) for "no tracker", which Accelerate rejects as an unknown tracker. This module
turns both into the run's start: "none" is dropped, a tracker that is not installed raises a one-line
`ConfigError` saying what to pip install. metrics.jsonl is written whatever the trackers.
"""

from __future__ import annotations

from collections.abc import Sequence

from marginkit.configlib import ConfigError

__all__ = ["resolve_trackers", "TRACKER_PACKAGES"]

# Accelerate's tracker name -> (its availability check in accelerate.utils, the package to pip install)
TRACKER_PACKAGES: dict[str, tuple[str, str]] = {
    "tensorboard": ("is_tensorboard_available", "tensorboard"),
    "wandb": ("is_wandb_available", "wandb"),
    "trackio": ("is_trackio_available", "trackio"),
    "comet_ml": ("is_comet_ml_available", "comet-ml"),
    "mlflow": ("is_mlflow_available", "mlflow"),
    "clearml": ("is_clearml_available", "clearml"),
    "dvclive": ("is_dvclive_available", "dvclive"),
    "swanlab": ("is_swanlab_available", "swanlab"),
    "aim": ("is_aim_available", "aim"),
}


def resolve_trackers(report_to: Sequence[str]) -> list[str]:
    """The tracker names to hand Accelerate's `log_with` ([] for none); raises ConfigError for an unknown name,
    "none" beside a tracker, or a tracker whose package is not installed (`all`: every installed tracker)."""
    import accelerate.utils

    names = [name.strip().lower() for name in report_to]
    given = f"train.report_to={list(report_to)}"
    if "none" in names:
        if len(names) > 1:
            raise ConfigError(f"{given}: none means no tracker; give none alone, or only tracker names")
        return []
    known = sorted(TRACKER_PACKAGES)
    for name in names:
        if name == "all":
            continue
        if name not in TRACKER_PACKAGES:
            raise ConfigError(f"{given}: unknown tracker {name!r}; known: {known}, all (every installed one) or none")
        check, package = TRACKER_PACKAGES[name]
        if not getattr(accelerate.utils, check)():
            raise ConfigError(f"{given}: {name} is not installed, so nothing would be logged to it; pip install "
                              f"{package} (or train.report_to=[none]: metrics.jsonl is always written)")
    return names
