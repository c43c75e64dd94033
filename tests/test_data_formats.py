"""Format converters: the worked examples, the registry and detection, and properties of each split/expansion."""

from __future__ import annotations

import doctest
import json
import math
from itertools import combinations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marginkit.data.formats import _DETECTION_ORDER as DETECTION_ORDER
from marginkit.data.formats import (
    FORMATS,
    alpaca_eval,
    build_options,
    detect_format,
    finegrained,
    hh,
    native,
    prometheus,
    ranking,
    scores,
    trl,
)
from marginkit.data.formats._base import Graded, get_field, leftovers
from marginkit.data.schema import Pair
from marginkit.data.validate import RowError, validate_pair

FORMAT_MODULES = [native, trl, hh, scores, ranking, finegrained, prometheus, alpaca_eval]
USER = {"role": "user", "content": "Hi"}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


# ---- worked examples and registry -------------------------------------------------------------


@pytest.mark.parametrize("module", FORMAT_MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_worked_example_in_docstring_runs(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{module.__name__} has no worked example"
    assert result.failed == 0


def test_every_format_has_a_module_and_a_detection_rule():
    assert sorted(DETECTION_ORDER) == sorted(FORMATS)
    assert {m.__name__.rsplit(".", 1)[-1] for m in FORMAT_MODULES} == set(FORMATS)


@pytest.mark.parametrize(
    "record, expected",
    [
        ({"prompt": "p", "chosen": "a", "rejected": "b", "margin": 1.0, "id": "x"}, "native"),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "source": "web"}, "trl"),  # extra field: not native
        ({"chosen": "Q: x A: a", "rejected": "Q: x A: b"}, "trl"),
        ({"prompt": [USER], "chosen": [assistant("a")], "rejected": [assistant("b")]}, "trl"),
        ({"chosen": "\n\nHuman: x\n\nAssistant: a", "rejected": "\n\nHuman: x\n\nAssistant: b"}, "hh"),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "metadata": {"score_chosen": 2, "score_rejected": 1}}, "scores"),
        ({"prompt": "p", "chosen": [USER, assistant("a")], "rejected": [USER, assistant("b")],
          "score_chosen": 8.0, "score_rejected": 4.0, "prompt_id": "z"}, "scores"),
        ({"prompt": "p", "responses": ["a", "b"], "scores": [1, 2]}, "ranking"),
        ({"prompt": "p", "responses": ["a", "b"], "ranks": [2, 1]}, "ranking"),
        ({"prompt": "p", "chosen": "a", "rejected": ["b", "c"]}, "ranking"),
        ({"question": "q", "prediction 1": "a", "prediction 2": "b", "preference": [1]}, "finegrained"),
        ({"idx": 1, "instruction": "###...", "gpt4_score": [1, 2, 3]}, "prometheus"),
        ({"instruction": "i", "output_1": "a", "output_2": "b", "preference": 1.5}, "alpaca_eval"),
    ],
)
def test_detect_format(record, expected):
    assert detect_format(record) == expected


def test_detect_format_lists_the_registry_when_nothing_matches():
    with pytest.raises(ValueError) as info:
        detect_format({"question": "q", "answer": "a"})
    for name in FORMATS:
        assert name in str(info.value)


def test_build_options_rejects_unknown_names_and_bad_values():
    with pytest.raises(ValueError, match=r"no option\(s\) \['polcy'\].*policy"):
        build_options("ranking", ranking.RankingOptions, {"polcy": "adjacent"})
    with pytest.raises(ValueError, match="policy='pairs'"):
        build_options("ranking", ranking.RankingOptions, {"policy": "pairs"})
    with pytest.raises(ValueError, match="include_reference"):
        build_options("alpaca_eval", alpaca_eval.AlpacaEvalOptions, {"include_reference": "no"})
    opts = build_options("finegrained", finegrained.FineGrainedOptions, {"response_fields": ["a", "b"]})
    assert opts.response_fields == ("a", "b")  # a list from YAML/JSON becomes the declared tuple
    with pytest.raises(ValueError, match="two fields"):
        build_options("alpaca_eval", alpaca_eval.AlpacaEvalOptions, {"output_fields": ("a",)})


def test_field_paths_and_leftovers():
    record = {"a": 1, "metadata": {"s": 2, "t": 3}, "m.x": 4}
    assert get_field(record, "metadata.s") == 2
    assert get_field(record, "m.x") == 4  # a literal dotted key wins
    with pytest.raises(RowError, match="missing field"):
        get_field(record, "metadata.u")
    assert leftovers(record, ("a", "metadata.s", "m.x")) == {"metadata": {"t": 3}}
    assert leftovers(record, ("metadata.s", "metadata.t")) == {"a": 1, "m.x": 4}  # emptied dict goes
    assert record["metadata"] == {"s": 2, "t": 3}  # not mutated


# ---- native -------------------------------------------------------------------------------------

_texts = st.text(min_size=1, max_size=20).filter(lambda s: s.strip())
_numbers = st.none() | st.floats(allow_nan=False, allow_infinity=False, width=32)


@st.composite
def _pairs(draw) -> Pair:
    prompt = draw(_texts | st.tuples(st.fixed_dictionaries({"role": st.just("user"), "content": _texts})))
    chosen, rejected = draw(_texts), draw(_texts)
    s_c = draw(_numbers)
    s_r = None if s_c is None else draw(st.floats(allow_nan=False, allow_infinity=False, width=32))
    metadata = draw(st.dictionaries(st.sampled_from(["source", "lang"]), _texts, max_size=2))
    return Pair(prompt, chosen, rejected, margin=draw(_numbers), score_chosen=s_c, score_rejected=s_r,
                id=draw(st.none() | _texts), metadata=metadata)


@given(_pairs())
@settings(max_examples=60, deadline=None)
def test_native_round_trip_through_json(pair):
    record = json.loads(json.dumps(pair.to_record()))
    assert native.detect(record)
    (back,) = native.convert(record, native.NativeOptions()).pairs
    assert back == pair and back.metadata == pair.metadata


def test_native_extra_fields_go_to_metadata_and_clashes_raise():
    record = {"prompt": "p", "chosen": "a", "rejected": "b", "lang": "en", "metadata": {"source": "s"}}
    (pair,) = native.convert(record, native.NativeOptions()).pairs
    assert pair.metadata == {"source": "s", "lang": "en"}
    with pytest.raises(RowError, match="also a top-level field"):
        native.convert({**record, "metadata": {"lang": "fr"}}, native.NativeOptions())


# ---- trl: implicit text prompt -----------------------------------------------------------------


@given(st.text(max_size=30), st.text(max_size=30), st.text(max_size=30))
@settings(max_examples=300, deadline=None)
def test_implicit_prompt_reconstructs_both_texts(common, tail_c, tail_r):
    chosen, rejected = common + tail_c, common + tail_r
    try:
        prompt, c, r = trl.split_implicit(chosen, rejected)
    except RowError:
        return  # no whitespace in the common prefix: no prompt (checked below)
    assert prompt + c == chosen and prompt + r == rejected
    assert prompt and not prompt[-1].isspace()  # never ends in whitespace ...
    assert c[:1].isspace() and r[:1].isspace()  # ... which stays with the responses


_word = st.text(st.characters(categories=["L", "N", "P"]), min_size=1, max_size=8)


@given(st.lists(_word, min_size=1, max_size=5), _word, _word, st.text(max_size=10), st.text(max_size=10))
@settings(max_examples=200, deadline=None)
def test_implicit_prompt_finds_the_prompt_when_the_responses_differ_in_their_first_word(words, a, b, rest_a, rest_b):
    prompt = " ".join(words)
    if a[0] == b[0]:
        b = ("x" if a[0] != "x" else "y") + b[1:]
    got = trl.split_implicit(prompt + " " + a + rest_a, prompt + " " + b + rest_b)
    assert got == (prompt, " " + a + rest_a, " " + b + rest_b)


def test_implicit_prompt_without_a_word_boundary_is_invalid():
    with pytest.raises(RowError, match="no shared prompt"):
        trl.split_implicit("Yes", "No")
    with pytest.raises(RowError):
        trl.split_implicit("  a", "  b")  # only whitespace in common: the prompt would be empty


# ---- trl: conversational -----------------------------------------------------------------------


def _trl(record):
    (pair,) = trl.convert(record, trl.TrlOptions()).pairs
    return pair


def test_conversational_explicit_prompt():
    pair = _trl({"prompt": [USER], "chosen": [assistant("Hello")], "rejected": [assistant("Bye")]})
    assert (pair.prompt, pair.chosen, pair.rejected) == ((USER,), "Hello", "Bye")


def test_conversational_implicit_prompt_takes_the_shared_leading_messages():
    turns = [USER, assistant("Hello"), {"role": "user", "content": "Joke?"}]
    pair = _trl({"chosen": turns + [assistant("Knock knock")], "rejected": turns + [assistant("No")]})
    assert pair.prompt == tuple(turns) and (pair.chosen, pair.rejected) == ("Knock knock", "No")


def test_string_prompt_with_full_conversations_h4_style():
    record = {"prompt": "Hi", "chosen": [USER, assistant("a")], "rejected": [USER, assistant("b")]}
    assert _trl(record).prompt == (USER,)
    with pytest.raises(RowError, match="differs from the last user message"):
        _trl({**record, "prompt": "Hello"})
    # responses holding only the assistant message: the string becomes the user message
    assert _trl({"prompt": "Hi", "chosen": [assistant("a")], "rejected": [assistant("b")]}).prompt == (USER,)


def test_conversational_response_must_be_one_assistant_message():
    with pytest.raises(RowError, match="exactly one assistant message") as info:
        _trl({"prompt": [USER], "chosen": [assistant("a"), assistant("b")], "rejected": [assistant("c")]})
    assert info.value.problem.field == "chosen" and "2 message(s)" in info.value.problem.detail
    with pytest.raises(RowError, match="exactly one assistant message") as info:
        _trl({"prompt": [USER], "chosen": [assistant("a")], "rejected": [{"role": "user", "content": "c"}]})
    assert info.value.problem.field == "rejected"


def test_identical_conversations_reach_validation_as_identical_responses():
    pair = _trl({"chosen": [USER, assistant("a")], "rejected": [USER, assistant("a")]})
    assert [p.reason for p in validate_pair(pair)] == ["rejected: identical to chosen"]


def test_mixed_string_and_list_responses_are_invalid():
    with pytest.raises(RowError, match="both be strings or both message lists"):
        _trl({"prompt": "p", "chosen": "a", "rejected": [assistant("b")]})


# ---- hh ------------------------------------------------------------------------------------------

_turn = st.text(st.characters(exclude_characters="\n"), min_size=1, max_size=15)


@given(st.lists(st.tuples(_turn, _turn), min_size=0, max_size=3), _turn, _turn, _turn)
@settings(max_examples=150, deadline=None)
def test_hh_prompt_is_the_dialogue_up_to_the_final_assistant_marker(history, question, a, b):
    a, b = a.strip() or "a", b.strip() or "b"
    if a == b:
        b += "!"
    dialogue = "".join(f"{hh.HUMAN} {h}{hh.ASSISTANT} {r}" for h, r in history) + f"{hh.HUMAN} {question}{hh.ASSISTANT}"
    assert hh.split_dialogue(dialogue + " " + a, dialogue + " " + b) == (dialogue, a, b)


def test_hh_rows_whose_dialogues_diverge_earlier_are_invalid():
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Joke?\n\nAssistant: Knock knock"
    rejected = "\n\nHuman: Hi\n\nAssistant: Go away\n\nHuman: Rude!\n\nAssistant: Sorry"
    with pytest.raises(RowError, match="dialogues differ before the final assistant turn") as info:
        hh.convert({"chosen": chosen, "rejected": rejected}, hh.HHOptions())
    assert info.value.problem.field == "chosen"


# ---- scores --------------------------------------------------------------------------------------


def _scores(record, **options):
    (pair,) = scores.convert(record, scores.ScoresOptions(**options)).pairs
    return pair


def test_scores_top_level_nested_and_named_fields():
    base = {"prompt": "p", "chosen": "a", "rejected": "b"}
    assert _scores({**base, "score_chosen": 8, "score_rejected": 6.5}).score_gap == 1.5
    pair = _scores({**base, "metadata": {"score_chosen": 3.0, "score_rejected": 1.0, "model": "m"}})
    assert (pair.score_chosen, pair.score_rejected, pair.metadata) == (3.0, 1.0, {"metadata": {"model": "m"}})
    pair = _scores({**base, "ratings": {"good": 5, "bad": 2}},
                   score_chosen_field="ratings.good", score_rejected_field="ratings.bad")
    assert pair.score_gap == 3 and pair.metadata == {}
    with pytest.raises(RowError, match="missing field") as info:
        _scores(base)
    assert info.value.problem.field == "score_chosen"


def test_scores_with_h4_message_lists():
    record = {"prompt": "Hi", "chosen": [USER, assistant("a")], "rejected": [USER, assistant("b")],
              "score_chosen": 9.0, "score_rejected": 2.0, "prompt_id": "abc"}
    pair = _scores(record, id_field="prompt_id")
    assert (pair.prompt, pair.chosen, pair.rejected, pair.score_gap, pair.id) == ((USER,), "a", "b", 7.0, "abc")


# ---- ranking -------------------------------------------------------------------------------------


def _ranking(record, **options):
    return ranking.convert(record, ranking.RankingOptions(**options))


@given(st.lists(st.integers(-50, 50), min_size=2, max_size=9, unique=True))
@settings(max_examples=100, deadline=None)
def test_expansion_counts_for_distinct_scores(values):
    k = len(values)
    record = {"prompt": "p", "responses": [f"r{i}" for i in range(k)], "scores": values}
    expected = {"all_pairs": k * (k - 1) // 2, "best_vs_rest": k - 1, "adjacent": k - 1}
    for policy, n in expected.items():
        out = _ranking(record, policy=policy)
        assert len(out.pairs) == n and out.dropped == ()
        assert all(p.score_chosen > p.score_rejected for p in out.pairs)
    best = max(values)
    assert all(p.score_chosen == best for p in _ranking(record, policy="best_vs_rest").pairs)
    adjacent = _ranking(record, policy="adjacent").pairs
    assert [p.score_chosen for p in adjacent] == sorted(values, reverse=True)[:-1]


@given(st.lists(st.integers(0, 3), min_size=2, max_size=8), st.sampled_from(["all_pairs", "best_vs_rest", "adjacent"]))
@settings(max_examples=100, deadline=None)
def test_ties_are_dropped_with_a_reason_each_or_kept_with_gap_zero(values, policy):
    k = len(values)
    record = {"prompt": "p", "responses": [f"r{i}" for i in range(k)], "scores": values}
    candidates = k * (k - 1) // 2 if policy == "all_pairs" else k - 1
    dropped = _ranking(record, policy=policy, ties="drop")
    kept = _ranking(record, policy=policy, ties="keep")
    assert len(dropped.pairs) + len(dropped.dropped) == candidates == len(kept.pairs)
    assert all(p.score_gap > 0 for p in dropped.pairs)
    ties = [p for p in kept.pairs if p.metadata.get("tie")]
    assert len(ties) == len(dropped.dropped)
    for p in ties:  # gap 0, and the earlier response in the list is chosen
        assert p.score_gap == 0 and p.metadata["pair"][0] < p.metadata["pair"][1]


def test_ranks_order_without_inventing_scores():
    out = _ranking({"prompt": "p", "responses": ["a", "b", "c"], "ranks": [2, 1, 3]}, policy="adjacent")
    assert [(p.chosen, p.rejected) for p in out.pairs] == [("b", "a"), ("a", "c")]
    assert all(p.score_chosen is None for p in out.pairs)
    assert out.pairs[0].metadata["chosen_info"] == {"rank": 1}


def test_one_chosen_against_k_rejected():
    record = {"prompt": "p", "chosen": "good", "rejected": ["bad", "worse", "worst"], "id": 5}
    out = _ranking(record, id_field="id")
    assert [(p.chosen, p.rejected) for p in out.pairs] == [("good", "bad"), ("good", "worse"), ("good", "worst")]
    assert all(p.score_chosen is None and p.id == "5" for p in out.pairs)
    with pytest.raises(RowError, match="needs a full order"):
        _ranking(record, policy="adjacent")


@pytest.mark.parametrize(
    "record, match",
    [
        ({"prompt": "p", "responses": ["a"], "scores": [1]}, "fewer than 2"),
        ({"prompt": "p", "responses": ["a", "b"], "scores": [1]}, "same length"),
        ({"prompt": "p", "responses": ["a", "b"], "scores": [1, "2"]}, "not a number"),
        ({"prompt": "p", "responses": ["a", "b"], "scores": [1, math.nan]}, "not finite"),
    ],
)
def test_invalid_ranking_rows(record, match):
    with pytest.raises(RowError, match=match):
        _ranking(record)


# ---- finegrained ---------------------------------------------------------------------------------


def test_finegrained_codes_in_combination_order():
    record = {"question": "q", "passages": [["t", "x"]], "preference": [2, 0, 1, 1, 2, 0]}
    record.update({f"prediction {i}": f"p{i}" for i in range(1, 5)})
    out = finegrained.convert(record, finegrained.FineGrainedOptions(ties="keep"))
    # (1v2: 2 wins) (1v3: tie) (1v4: 1 wins) (2v3: 2 wins) (2v4: 4 wins) (3v4: tie)
    expected = [("p2", "p1"), ("p1", "p3"), ("p1", "p4"), ("p2", "p3"), ("p4", "p2"), ("p3", "p4")]
    assert [(p.chosen, p.rejected) for p in out.pairs] == expected
    assert [bool(p.metadata.get("tie")) for p in out.pairs] == [False, True, False, False, False, True]
    assert out.pairs[0].metadata["passages"] == [["t", "x"]]
    with pytest.raises(RowError, match="unknown preference code"):
        finegrained.convert({**record, "preference": [3, 0, 1, 1, 2, 0]}, finegrained.FineGrainedOptions())
    with pytest.raises(RowError, match="list of 6 codes"):
        finegrained.convert({**record, "preference": [1]}, finegrained.FineGrainedOptions())


# ---- grouped formats -----------------------------------------------------------------------------


def _judge(question: str, answer: str) -> str:
    return f"###The instruction to evaluate:\n{question}\n\n###Response to evaluate:\n{answer}\n\n###Score Rubrics:\n."


def test_prometheus_pools_must_share_the_prompt_unless_use_first():
    rows = [{"idx": 7, "instruction": _judge(q, a), "gpt4_score": s}
            for q, a, s in [("Q1", "a", [4, 4, 4]), ("Q1'", "b", [2, 2, 2])]]
    options = prometheus.PrometheusOptions()
    responses = [g for row in rows for g in prometheus.convert(row, options).responses]
    with pytest.raises(RowError, match="different prompts"):
        prometheus.finish_group(7, responses, options)
    out = prometheus.finish_group(7, responses, prometheus.PrometheusOptions(prompt_mismatch="use_first"))
    (pair,) = out.pairs
    assert (pair.prompt, pair.chosen, pair.score_gap) == ("Q1", "a", 2.0)
    assert pair.metadata["rejected_prompt"] == "Q1'" and "chosen_prompt" not in pair.metadata
    with pytest.raises(RowError, match="does not match the pattern"):
        prometheus.convert({"idx": 1, "instruction": "no markers", "gpt4_score": [1]}, options)


def _alpaca_row(generator: str, output: str, preference: float) -> dict:
    return {"instruction": "Say hi.", "output_1": "Hello.", "generator_1": "ref",
            "output_2": output, "generator_2": generator, "preference": preference}


def test_alpaca_eval_scores_are_log_odds_against_the_common_reference():
    # p = 0.8 -> logit = ln(0.8 / 0.2) = ln 4; p = 0.2 -> -ln 4; reference p = 0.5 -> 0
    rows = [_alpaca_row("m1", "Hi!", 1.8), _alpaca_row("m2", "Go away.", 1.2)]
    options = alpaca_eval.AlpacaEvalOptions()
    responses = [g for row in rows for g in alpaca_eval.convert(row, options).responses]
    out = alpaca_eval.finish_group("Say hi.", responses, options)  # the reference, seen twice, is merged
    got = [(p.chosen, p.rejected, round(p.score_gap, 6)) for p in out.pairs]
    ln4 = round(math.log(4), 6)
    assert got == [("Hi!", "Hello.", ln4), ("Hi!", "Go away.", round(2 * math.log(4), 6)), ("Hello.", "Go away.", ln4)]
    probability = alpaca_eval.AlpacaEvalOptions(score="probability", include_reference=False)
    responses = [g for row in rows for g in alpaca_eval.convert(row, probability).responses]
    (pair,) = alpaca_eval.finish_group("Say hi.", responses, probability).pairs
    assert (pair.chosen, pair.score_chosen, pair.score_rejected) == ("Hi!", pytest.approx(0.8), pytest.approx(0.2))


def test_alpaca_eval_invalid_rows_and_pools():
    options = alpaca_eval.AlpacaEvalOptions()
    with pytest.raises(RowError, match=r"outside \[1, 2\]"):
        alpaca_eval.convert(_alpaca_row("m", "x", 2.5), options)
    clash = [g for row in (_alpaca_row("m", "x", 1.5), _alpaca_row("m", "y", 1.5))
             for g in alpaca_eval.convert(row, options).responses]
    with pytest.raises(RowError, match="two different outputs"):
        alpaca_eval.finish_group("Say hi.", clash, options)
    alone = list(alpaca_eval.convert(_alpaca_row("m", "x", 1.5), alpaca_eval.AlpacaEvalOptions(include_reference=False)).responses)
    with pytest.raises(RowError, match="fewer than 2"):
        alpaca_eval.finish_group("Say hi.", alone, options)


def test_expand_keeps_combinations_order_for_all_pairs():
    graded = [Graded(t, order=o, score=o) for t, o in [("a", 1.0), ("b", 3.0), ("c", 2.0)]]
    out = ranking.expand("p", graded, "all_pairs", "drop")
    assert [p.metadata["pair"] for p in out.pairs] == [list(c) for c in combinations([1, 2, 0], 2)]
