"""Studies: many runs over seeds and settings, summarised with intervals (margins.py: `marginkit study margins`)."""

from marginkit.study.margins import STUDY_SIZES, STUDY_VARIANTS, StudyConfig, StudyVariant, run_study

__all__ = ["STUDY_SIZES", "STUDY_VARIANTS", "StudyConfig", "StudyVariant", "run_study"]
