"""Studies: many runs over seeds and settings, summarised with intervals (margins.py: `marginkit study margins`;
real/: the same on real data), and the gold world's base -> SFT -> DPO policy pipeline (world_pipeline.py:
`marginkit world pipeline`)."""

from marginkit.study.margins import STUDY_SIZES, STUDY_VARIANTS, StudyConfig, StudyVariant, run_study

__all__ = ["STUDY_SIZES", "STUDY_VARIANTS", "StudyConfig", "StudyVariant", "run_study"]
