"""The margin map (`marginkit study map`, docs/study_margins.md): which margins help, in which regime.

variants.py: the rows (controls, margin strategies, robust losses); fit.py: the shared step and the two RM
classes (linear on the world's own features: well specified; tiny transformer); runner.py: cells x seeds ->
rows; report.py: tables, Holm-corrected comparisons, claims and plots from the rows alone.
"""

from marginkit.study.margin_map.runner import MapConfig, run_map
from marginkit.study.margin_map.variants import VARIANTS, MapVariant

__all__ = ["MapConfig", "MapVariant", "VARIANTS", "run_map"]
