"""Margin strategies: detached [B] outputs for every registered strategy, hand-worked values, reductions to BT."""

import math

import pytest
import torch
from torch.testing import assert_close

from marginkit.margins import MARGINS, MarginInputs, MarginSpec, build_margin
from marginkit.margins.fixed import FixedMargin, FixedMarginConfig
from marginkit.margins.label import LabelMargin, LabelMarginConfig
from marginkit.margins.oracle import OracleMargin, OracleMarginConfig

NAN = math.nan


def inputs(gap, label=None, score=None, gold=None, emb=False):
    gap = torch.tensor(gap, requires_grad=False)
    full = lambda v: torch.tensor(v) if v is not None else torch.full_like(gap, NAN)  # noqa: E731
    e = torch.randn(len(gap), 4) if emb else None
    return MarginInputs(gap, full(label), full(score), full(gold), 0, e, e)


@pytest.mark.parametrize("name", sorted(MARGINS))
def test_every_strategy_detached_shape_b(name):
    gap = torch.tensor([0.5, -0.2, 1.0], requires_grad=True)  # even a grad-carrying gap must not leak
    x = MarginInputs(gap, torch.ones(3), torch.ones(3), torch.ones(3), 0, torch.randn(3, 4), torch.randn(3, 4))
    out = build_margin(MarginSpec(name=name))(x)
    assert out.target_margin.shape == (3,) and out.active.shape == (3,)
    assert out.target_margin.requires_grad is False and out.active.dtype == torch.bool
    assert all(not v.requires_grad for v in out.diagnostics.values())


def test_none_is_plain_bt():
    out = build_margin(MarginSpec(name="none"))(inputs([1.0, 2.0]))
    assert_close(out.target_margin, torch.zeros(2))
    assert not out.active.any()


def test_fixed_value_and_zero_reduces_to_bt():
    out = FixedMargin(FixedMarginConfig(value=1.5))(inputs([0.0, 3.0]))
    assert_close(out.target_margin, torch.tensor([1.5, 1.5]))
    assert_close(FixedMargin(FixedMarginConfig(value=0.0))(inputs([0.0])).target_margin, torch.zeros(1))


def test_label_score_gap_scaled_and_clipped():
    # scores 7-3 = 4, 5-5 = 0, 2-6 = -4; scale 0.5 -> 2, 0, -2; clip [0, 1.5] -> 1.5, 0, 0
    cfg = LabelMarginConfig(source="score_gap", scale=0.5, min_margin=0.0, max_margin=1.5)
    out = LabelMargin(cfg)(inputs([0.0, 0.0, 0.0], score=[4.0, 0.0, -4.0]))
    assert_close(out.target_margin, torch.tensor([1.5, 0.0, 0.0]))


def test_label_level_table():
    # Llama-2 small table on rounded score gaps: 3 -> 1, 2 -> 2/3, 1 -> 1/3, 0 -> 0; 1.6 rounds to 2
    table = {0: 0.0, 1: 1 / 3, 2: 2 / 3, 3: 1.0}
    out = LabelMargin(LabelMarginConfig(table=table))(inputs([0.0] * 4, score=[3.0, 1.6, 1.0, 0.0]))
    assert_close(out.target_margin, torch.tensor([1.0, 2 / 3, 1 / 3, 0.0]))
    with pytest.raises(ValueError, match=r"levels \[5\]"):
        LabelMargin(LabelMarginConfig(table=table))(inputs([0.0], score=[5.0]))


def test_label_margin_column_and_missing_label():
    out = LabelMargin(LabelMarginConfig(source="margin", scale=2.0))(inputs([0.0, 0.0], label=[0.25, 1.0]))
    assert_close(out.target_margin, torch.tensor([0.5, 2.0]))
    with pytest.raises(ValueError, match=r"batch positions \[1\]"):
        LabelMargin()(inputs([0.0, 0.0], score=[1.0, NAN]))


def test_oracle_uses_gold_gap():
    out = OracleMargin(OracleMarginConfig(scale=2.0))(inputs([0.0, 0.0], gold=[0.5, -0.25]))
    assert_close(out.target_margin, torch.tensor([1.0, -0.5]))
    with pytest.raises(ValueError, match="gold"):
        OracleMargin()(inputs([0.0]))


def test_needs_declared():
    assert LabelMargin().needs == {"score_gap"}
    assert LabelMargin(LabelMarginConfig(source="margin")).needs == {"label_margin"}
    assert OracleMargin().needs == {"gold_gap"}


def test_unknown_strategy_lists_registry():
    spec = MarginSpec()
    spec.name = "magic"  # bypass Literal typing on purpose
    with pytest.raises(ValueError, match="known"):
        build_margin(spec)


def test_target_margins_zero_inactive_pairs_and_pass_the_batch():
    """margins.target_margins (the one margin call: rm_step, dpo_step's ODPO offsets, the final-model snapshot,
    the study's frozen head): m is 0 wherever the strategy marks a pair inactive, whatever value it returned
    there, and detached; MarginInputs.from_batch hands the strategy Δ (detached), labels and index."""
    from marginkit.margins import Margins, target_margins

    seen = {}

    class Stub:
        needs = frozenset()

        def __call__(self, inputs):
            seen.update(gap=inputs.reward_gap.tolist(), index=inputs.index.tolist(), score=inputs.score_gap.tolist(),
                        gap_grad=inputs.reward_gap.requires_grad)
            return Margins(torch.tensor([2.0, 3.0, 4.0], requires_grad=True), torch.tensor([True, False, True]),
                           {"spread": torch.tensor([1.0, 2.0, 3.0], requires_grad=True)})

    chosen, rejected = torch.tensor([1.0, 0.5, 0.0], requires_grad=True), torch.tensor([0.0, 0.5, 1.0])
    batch = {"label_margin": torch.full((3,), float("nan")), "score_gap": torch.tensor([1.0, 2.0, 3.0]),
             "gold_gap": torch.full((3,), float("nan")), "index": torch.tensor([7, 8, 9])}
    out = target_margins(Stub(), MarginInputs.from_batch(chosen - rejected, batch, step=0))
    assert out.target_margin.tolist() == [2.0, 0.0, 4.0] and not out.target_margin.requires_grad
    assert out.active.tolist() == [True, False, True]
    assert not out.diagnostics["spread"].requires_grad
    assert seen == {"gap": [1.0, 0.0, -1.0], "index": [7, 8, 9], "score": [1.0, 2.0, 3.0], "gap_grad": False}


def test_target_margins_refuses_a_margin_that_is_not_b():
    """A [B, 1] margin minus a [B] gap would broadcast to [B, B]: the one call raises, printing both shapes."""
    from marginkit.margins import Margins, target_margins

    class Column:
        needs = frozenset()

        def __call__(self, inputs):
            return Margins(torch.ones(3, 1), torch.ones(3, 1, dtype=torch.bool))

    with pytest.raises(ValueError, match=r"\(3, 1\).*\(3,\)"):
        target_margins(Column(), inputs([0.0, 1.0, 2.0]))


def test_margin_name_literal_and_help_come_from_the_registry():
    """MARGINS is the one list of names: margin.name's Literal and its help text are built from it."""
    from typing import get_args, get_type_hints

    from marginkit.margins import MarginName

    assert set(get_args(MarginName)) == set(MARGINS)
    assert get_type_hints(MarginSpec)["name"] == MarginName
    help_text = MarginSpec.__dataclass_fields__["name"].metadata["help"]
    assert all(name in help_text for name in MARGINS)
    assert set(MARGINS) <= set(MarginSpec.__dataclass_fields__)  # each strategy's options have a section


@pytest.mark.parametrize("name", sorted(MARGINS))
def test_every_strategy_implements_the_protocol(name):
    """prepare is part of the Protocol: every strategy defines it (a no-op where nothing is precomputed)."""
    from marginkit.margins import MarginStrategy

    strategy = build_margin(MarginSpec(name=name))
    for member in ("prepare", "__call__", "state_dict", "load_state_dict"):
        assert callable(getattr(strategy, member)), (name, member)
    assert hasattr(MarginStrategy, "prepare") and isinstance(strategy.needs, frozenset)
