"""The variants of the margin map: controls, margin strategies and robust losses, one table row each.

Every variant is (labels, loss, margin): `labels` = "observed" (the world's noisy labels) or "clean" (the
truly better response as chosen: the noise-free control); `loss` = "bt" (-log σ(Δ - m)), "soft" (cross-entropy
to the labeller's own P(chosen), `losses.soft_bt_loss`: the soft-label ceiling) or "smooth" (soft_bt_loss with
p = 1 - ε for every pair: label smoothing, the robust loss for a flip rate ε); `margin` = a MarginSpec dict
passed to `margins.build_margin`, the same strategies train-rm runs. Scales are in true-reward units of the
world (median |true gap| about 0.9).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["MapVariant", "VARIANTS", "CONTROLS", "FAMILY_ORDER"]


@dataclass(frozen=True)
class MapVariant:
    name: str
    family: str
    margin: dict[str, Any] = field(default_factory=lambda: {"name": "none"})
    labels: str = "observed"
    loss: str = "bt"
    smoothing: float = 0.0
    needs_reference: bool = False  # confidence source=reference: the same seed's BT fit's gaps
    needs_confidence: bool = False  # reads the pair's `margin` column (annotators' confidence level)
    help: str = ""


def _v(name: str, family: str, **kw: Any) -> MapVariant:
    return MapVariant(name, family, **kw)


VARIANTS: dict[str, MapVariant] = {v.name: v for v in [
    # controls: what the test bed can reach (clean, soft), the baseline (bt), what perfect margins give (oracle)
    _v("clean", "control", labels="clean", help="BT on noise-free labels: the model's upper bound"),
    _v("soft", "control", loss="soft", help="cross-entropy to the labeller's P(chosen): the soft-label ceiling"),
    _v("bt", "bt", help="plain Bradley-Terry on the observed labels"),
    _v("oracle-1", "oracle", margin={"name": "oracle", "oracle": {"scale": 1.0}}, help="m = true gap"),
    # margins a user can have
    _v("fixed-0.5", "fixed", margin={"name": "fixed", "fixed": {"value": 0.5}}),
    _v("fixed-1", "fixed", margin={"name": "fixed", "fixed": {"value": 1.0}}),
    _v("label-0.25", "label", margin={"name": "label", "label": {"source": "score_gap", "scale": 0.25}},
       help="m = 0.25 x rating gap (Llama 2's label margin on 1-10 ratings)"),
    _v("label-0.5", "label", margin={"name": "label", "label": {"source": "score_gap", "scale": 0.5}}),
    _v("conf-level-0.5", "label", margin={"name": "label", "label": {"source": "margin", "scale": 0.5}},
       needs_confidence=True, help="m = 0.5 x the annotator's confidence level 0..3 (annotators world only)"),
    _v("conf-batch", "confidence", margin={"name": "confidence"},
       help="seed 000: batch-mean margin on pairs below the batch mean"),
    _v("conf-ref", "confidence", margin={"name": "confidence", "confidence": {"source": "reference",
                                                                              "reference_model": "bt"}},
       needs_reference=True, help="seed 000's reward confidence: the same seed's BT model's gap"),
    _v("ot-2", "ot", margin={"name": "ot", "ot": {"scale": 2.0}}, help="seed 002: OT margin (the library default)"),
    # robust losses
    _v("smooth-0.1", "smooth", loss="smooth", smoothing=0.1, help="label smoothing ε = 0.1"),
    _v("smooth-0.2", "smooth", loss="smooth", smoothing=0.2, help="label smoothing ε = 0.2"),
]}

CONTROLS = ("clean", "soft", "bt", "oracle")
FAMILY_ORDER = ("control", "bt", "oracle", "fixed", "label", "confidence", "ot", "smooth")
