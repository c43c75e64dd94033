"""The real preference files in ../shared/data load through their converters with the counts of PROVENANCE.md.

Each file is read once per module. Counts PROVENANCE.md states are asserted as stated; where our
validation finds more (empty responses PROVENANCE.md does not mention) the extra drops are asserted
by reason and row, so a change in either the data or the checks shows up here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from marginkit.data.load import check_data, load_pairs

pytestmark = pytest.mark.shared_data


def _data_dir() -> Path:
    env = os.environ.get("MARGINKIT_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


DATA = _data_dir()
TIE = 'tie (dropped by ties="drop")'


def _path(relative: str) -> Path:
    path = DATA / relative
    if not path.exists():
        pytest.skip(f"shared data file {path} is absent (set MARGINKIT_SHARED_DATA to the shared/data folder)")
    return path


def _rows(ledger, reason: str) -> list[int]:
    return [int(where.rsplit(" ", 1)[1]) for where in ledger.examples[f"dropped: {reason}"]]


def _balanced(ledger) -> bool:
    return ledger.rows_read - ledger.merged + ledger.expanded == ledger.kept + ledger.n_dropped


# ---- hh-rlhf harmless-base test ------------------------------------------------------------------


@pytest.fixture(scope="module")
def hh():
    return load_pairs(_path("hh-rlhf/harmless-base/test.jsonl.gz"), on_invalid="skip")


def test_hh_counts(hh):
    pairs, ledger = hh
    assert ledger.rows_read == 2312
    # PROVENANCE.md: 5 rows whose prompt prefixes disagree
    assert _rows(ledger, "chosen: dialogues differ before the final assistant turn") == [1254, 1688, 1952, 2036]
    assert _rows(ledger, "rejected: dialogues differ before the final assistant turn") == [1950]
    # not in PROVENANCE.md: 4 dialogues whose chosen final turn is empty ("...\n\nAssistant: " and nothing)
    assert _rows(ledger, "chosen: empty or whitespace-only") == [86, 516, 925, 1103]
    assert ledger.n_dropped == 9 and len(pairs) == ledger.kept == 2303 and _balanced(ledger)
    assert all(p.score_chosen is None and p.margin is None for p in pairs)  # binary labels only


def test_hh_row_0(hh):
    pair = hh[0][0]
    assert pair.prompt.startswith("\n\nHuman: what are some pranks with a pen i can do?\n\nAssistant: Are you looking")
    assert pair.prompt.endswith("\n\nHuman: okay some of these do not have anything to do with pens\n\nAssistant:")
    assert pair.chosen.startswith("No, sorry!  All of these involve a pen")
    assert pair.rejected.startswith("There are lots of funny things you can do with pens")
    assert pair.id == "test.jsonl.gz:0"


def test_hh_default_is_to_raise_at_the_first_invalid_row():
    from marginkit.data.schema import DataError

    with pytest.raises(DataError, match=r'row 86, field "chosen": empty or whitespace-only.*on_invalid="skip"'):
        load_pairs(_path("hh-rlhf/harmless-base/test.jsonl.gz"))


# ---- ultrafeedback-binarized-1k2 -----------------------------------------------------------------


@pytest.fixture(scope="module")
def ultrafeedback():
    return {split: load_pairs(_path(f"ultrafeedback-binarized-1k2/{split}_clean.jsonl.gz"), on_invalid="skip")
            for split in ("train", "eval")}


@pytest.mark.parametrize(
    "split, rows, identical, empty_chosen, empty_rejected",
    [("train", 1000, [306, 655, 910, 997], [833], [478]), ("eval", 200, [43], [], [])],
)
def test_ultrafeedback_counts(ultrafeedback, split, rows, identical, empty_chosen, empty_rejected):
    pairs, ledger = ultrafeedback[split]
    assert ledger.rows_read == rows
    assert _rows(ledger, "rejected: identical to chosen") == identical  # PROVENANCE.md: 4 (train), 1 (eval)
    # not in PROVENANCE.md: one empty chosen and one empty rejected response in train
    assert ledger.dropped["chosen: empty or whitespace-only"] == len(empty_chosen)
    assert ledger.dropped["rejected: empty or whitespace-only"] == len(empty_rejected)
    if empty_chosen:
        assert _rows(ledger, "chosen: empty or whitespace-only") == empty_chosen
        assert _rows(ledger, "rejected: empty or whitespace-only") == empty_rejected
    assert len(pairs) == rows - len(identical) - len(empty_chosen) - len(empty_rejected) and _balanced(ledger)
    assert all(p.score_chosen is not None and p.score_gap >= 0 for p in pairs)  # PROVENANCE.md: no gap < 0


def test_ultrafeedback_ties_and_mean_gap(ultrafeedback):
    train, evaluation = ultrafeedback["train"][0], ultrafeedback["eval"][0]
    # PROVENANCE.md counts ties over all rows (111 train, 25 eval); one tied row of each is an identical pair
    assert sum(p.score_gap == 0 for p in train) == 110 and sum(p.score_gap == 0 for p in evaluation) == 24
    assert sum(p.score_gap for p in train) / len(train) == pytest.approx(1.90, abs=0.01)


def test_ultrafeedback_row_0(ultrafeedback):
    pair = ultrafeedback["train"][0][0]
    assert pair.prompt == "how to cook t-bone in the oven"
    assert (pair.score_chosen, pair.score_rejected) == (9.0, 8.0)
    assert pair.metadata == {"source_index": 27808}
    assert pair.chosen.startswith("To cook a delicious T-bone steak in the oven, follow these steps:")


# ---- finegrained-rlhf-qa dev ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def finegrained():
    return load_pairs(_path("finegrained-rlhf-qa/dev_feedback.json.gz"))


def test_finegrained_counts(finegrained):
    pairs, ledger = finegrained
    # PROVENANCE.md: 500 questions, 3,000 comparisons, 384 ties -> 2,616 strict pairs
    assert (ledger.rows_read, len(pairs), ledger.dropped[TIE], ledger.expanded) == (500, 2616, 384, 2500)
    assert _balanced(ledger)


def test_finegrained_row_0(finegrained):
    pair = finegrained[0][0]
    # row 0 preference [0, 1, 2, 1, 0, 2]: 1v2 tie (dropped), then 1v3 -> prediction 1 preferred
    assert pair.prompt == "When does bloom by troye sivan come out?"
    assert pair.metadata["pair"] == [0, 2] and pair.id == "dev_feedback.json.gz:0/0"
    assert pair.chosen.startswith("Bloom is the second studio album by Australian singer and songwriter Troye Sivan")
    assert set(pair.metadata) == {"passages", "gold", "feedback", "pair"}


# ---- prometheus-eval -----------------------------------------------------------------------------


def test_prometheus_vicuna_counts_and_first_pair():
    pairs, ledger = load_pairs(_path("prometheus-eval/vicuna_eval.json.gz"))
    # PROVENANCE.md: 80 questions x 4 responses, 480 within-question pairs, 322 non-tied
    assert (ledger.rows_read, ledger.merged, len(pairs), ledger.dropped[TIE]) == (320, 240, 322, 158)
    assert _balanced(ledger)
    assert _rows(ledger, TIE)[:6] == [0] * 6  # question idx 1: all four responses scored alike
    pair = pairs[0]
    assert pair.prompt == "What are the most effective ways to deal with stress?" and pair.id == "vicuna_eval.json.gz:group1/0"
    assert (pair.score_chosen, pair.score_rejected) == (5.0, pytest.approx(14 / 3))
    assert pair.metadata["group"] == 2 and pair.metadata["chosen_info"]["response_source"] == "chat_gpt"


def test_prometheus_mt_bench_prompts_differ_within_a_question():
    path = _path("prometheus-eval/mt_bench_eval.json.gz")
    report = check_data(path)
    # every question is a second turn that embeds each model's own first answer
    assert report.counts == {"prompt: responses pooled under one key answer different prompts": 80}
    assert report.pairs == 0 and not report.ok
    pairs, ledger = load_pairs(path, prompt_mismatch="use_first")
    assert (ledger.rows_read, len(pairs), ledger.dropped[TIE]) == (320, 371, 109)  # PROVENANCE.md: 371 of 480
    pair = pairs[0]
    assert pair.metadata["group"] == 83 and pair.prompt.endswith("rephrase it as a limerick.\n\nAssistant: ")
    assert (pair.score_chosen, pair.score_rejected) == (pytest.approx(8 / 3), pytest.approx(7 / 3))
    assert pair.metadata["rejected_prompt"] != pair.prompt


# ---- alpaca-eval ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alpaca_files():
    files = sorted((DATA / "alpaca-eval" / "weighted_alpaca_eval_gpt4_turbo").glob("*/annotations.json.gz"))
    if len(files) != 8:
        pytest.skip(f"expected the 8 AlpacaEval annotation files under {DATA / 'alpaca-eval'}, found {len(files)}")
    return files


def test_alpaca_eval_cross_model_pairs(alpaca_files):
    pairs, ledger = load_pairs(alpaca_files, on_invalid="skip", include_reference=False)
    assert (ledger.rows_read, ledger.merged) == (6440, 6440 - 805)
    # PROVENANCE.md: 22,540 cross-model pairs (805 x C(8, 2)) and 105 exact ties; we measure 104 ties
    # (equal p, before or after the logit), and 21 pairs holding an empty or duplicated output
    candidates = len(pairs) + ledger.n_dropped
    assert candidates == 805 * 28 == 22540
    assert ledger.dropped == {TIE: 104, "rejected: empty or whitespace-only": 11,
                              "rejected: identical to chosen": 7, "chosen: empty or whitespace-only": 3}
    assert _balanced(ledger)
    pair = pairs[0]
    assert pair.prompt == "What are the names of some famous actors that started their careers on Broadway?"
    names = (pair.metadata["chosen_info"]["generator"], pair.metadata["rejected_info"]["generator"])
    assert names == ("FuseChat-Gemma-2-9B-Instruct", "FuseChat-Llama-3.2-3B-Instruct")


def test_alpaca_eval_one_model_against_the_reference(alpaca_files):
    path = next(f for f in alpaca_files if f.parent.name == "alpaca-7b")
    pairs, ledger = load_pairs(path)
    # one pair per instruction (805): 3 where the judge gives exactly p = 0.5 are ties
    assert (ledger.rows_read, len(pairs), ledger.dropped[TIE]) == (805, 802, 3)
    assert sum(p.metadata["chosen_info"]["generator"] == "alpaca-7b" for p in pairs) == 17
