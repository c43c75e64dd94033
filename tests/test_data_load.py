"""Reading containers (io), loading with validation and the ledger (load_pairs), and check_data."""

from __future__ import annotations

import gzip
import importlib
import json
import math
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marginkit.data.formats import FORMATS
from marginkit.data.io import iter_rows, read_records
from marginkit.data.ledger import Ledger
from marginkit.data.load import check_data, load_pairs
from marginkit.data.schema import DataError, Pair

GOOD = {"prompt": "2+2?", "chosen": "4", "rejected": "5"}
DOCS = Path(__file__).resolve().parents[1] / "docs" / "data.md"


def write_jsonl(path: Path, lines: list[str]) -> Path:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def balanced(ledger: Ledger) -> bool:
    """The ledger identity of load.py: every row ends as kept pairs or dropped units."""
    return ledger.rows_read - ledger.merged + ledger.expanded == ledger.kept + ledger.n_dropped


# ---- io ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pairs.jsonl", "pairs.jsonl.gz"])
def test_jsonl_rows_are_line_indices_and_blank_lines_are_not_rows(tmp_path, name):
    path = write_jsonl(tmp_path / name, [json.dumps(GOOD), "", json.dumps({**GOOD, "chosen": "four"})])
    assert [(i, r["chosen"]) for i, r in read_records(path)] == [(0, "4"), (2, "four")]


def test_malformed_json_line_raises_naming_file_row_and_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [json.dumps(GOOD), '{"prompt": "x", "chosen": ', json.dumps(GOOD)])
    with pytest.raises(DataError) as info:
        list(read_records(path))
    assert (info.value.source, info.value.row) == (str(path), 1)
    assert "invalid JSON" in str(info.value) and "line 2" in str(info.value)
    pairs, ledger = load_pairs(path, on_invalid="skip")
    assert len(pairs) == 2 and ledger.dropped == {"invalid JSON": 1}
    assert ledger.examples["dropped: invalid JSON"] == [f"{path} row 1"]


def test_a_row_that_is_not_an_object_is_a_row_problem(tmp_path):
    path = write_jsonl(tmp_path / "list.jsonl", [json.dumps(GOOD), "[1, 2]"])
    with pytest.raises(DataError, match=r"row 1: row is not a JSON object"):
        load_pairs(path)


@pytest.mark.parametrize(
    "document, split, expected",
    [
        ([GOOD, GOOD], None, 2),
        ({"version": 1, "data": [GOOD]}, None, 1),  # one list-valued key
        ({"train": [GOOD, GOOD], "test": [GOOD]}, "test", 1),
    ],
)
@pytest.mark.parametrize("name", ["pairs.json", "pairs.json.gz"])
def test_json_list_or_one_list_valued_key(tmp_path, name, document, split, expected):
    path = tmp_path / name
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        json.dump(document, f)
    pairs, _ = load_pairs(path, split=split)
    assert len(pairs) == expected and pairs[0].id == f"{name}:0"


def test_json_source_level_errors(tmp_path):
    path = tmp_path / "two.json"
    path.write_text(json.dumps({"train": [GOOD], "test": [GOOD]}))
    with pytest.raises(DataError, match=r"2 list-valued keys \['test', 'train'\].*split="):
        load_pairs(path)
    with pytest.raises(DataError, match="no list-valued key 'dev'"):
        load_pairs(path, split="dev")
    broken = tmp_path / "broken.json"
    broken.write_text('[{"a": 1},')
    with pytest.raises(DataError, match="invalid JSON at line 1"):
        load_pairs(broken)
    with pytest.raises(DataError, match="no such file"):
        load_pairs(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="unknown file type '.csv'"):
        (tmp_path / "pairs.csv").write_text("a,b\n")
        load_pairs(tmp_path / "pairs.csv")
    with pytest.raises(DataError, match="split='train' given but a JSONL file has no splits"):
        load_pairs(write_jsonl(tmp_path / "p.jsonl", [json.dumps(GOOD)]), split="train")
    with pytest.raises(DataError, match="not a `datasets` save_to_disk folder"):
        load_pairs(tmp_path)


def test_parquet(tmp_path):
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist([{**GOOD, "margin": None}, {**GOOD, "chosen": "four", "margin": 2.0}]), path)
    pairs, ledger = load_pairs(path)
    assert [p.chosen for p in pairs] == ["4", "four"] and pairs[1].margin == 2.0 and ledger.kept == 2


def test_hugging_face_datasets_objects_and_folders(tmp_path):
    datasets = pytest.importorskip("datasets")
    train = datasets.Dataset.from_list([GOOD, {**GOOD, "chosen": "four"}])
    both = datasets.DatasetDict({"train": train, "test": datasets.Dataset.from_list([GOOD])})
    assert len(load_pairs(train)[0]) == 2
    assert len(load_pairs(both, split="test")[0]) == 1
    with pytest.raises(DataError, match=r"splits \['test', 'train'\].*split="):
        load_pairs(both)
    both.save_to_disk(str(tmp_path / "dd"))
    train.save_to_disk(str(tmp_path / "ds"))
    pairs, _ = load_pairs(tmp_path / "dd", split="train")
    assert [p.chosen for p in pairs] == ["4", "four"] and pairs[1].id.endswith("[train]:1")
    assert len(load_pairs(tmp_path / "ds")[0]) == 2


def test_a_list_of_files_is_read_in_order_with_each_files_rows(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [json.dumps(GOOD)])
    b = write_jsonl(tmp_path / "b.jsonl", [json.dumps(GOOD), json.dumps({**GOOD, "chosen": ""})])
    with pytest.raises(DataError) as info:
        load_pairs([a, b])
    assert (info.value.source, info.value.row, info.value.field) == (str(b), 1, "chosen")
    assert [r.where for r in iter_rows([a, b])] == [f"{a} row 0", f"{b} row 0", f"{b} row 1"]


# ---- validation through load_pairs --------------------------------------------------------------


@pytest.mark.parametrize(
    "change, field, problem",
    [
        ({"prompt": ""}, "prompt", "empty or whitespace-only"),
        ({"chosen": " \n\t"}, "chosen", "empty or whitespace-only"),
        ({"rejected": "4"}, "rejected", "identical to chosen"),
        ({"chosen": 4}, "chosen", "wrong type, expected a string"),
        ({"margin": math.nan}, "margin", "not finite"),
        ({"margin": math.inf}, "margin", "not finite"),
        ({"margin": "1.5"}, "margin", "not a number"),
        ({"score_chosen": True, "score_rejected": 1.0}, "score_chosen", "not a number"),
        ({"score_chosen": 3.0}, "score_rejected", "missing while score_chosen is given"),
        ({"prompt": [{"role": "user"}]}, "prompt[0]", 'not a message {"role": str, "content": str}'),
    ],
)
def test_each_invalid_pair_raises_located_or_is_counted(change, field, problem):
    records = [GOOD, GOOD, {**GOOD, **change}]
    with pytest.raises(DataError) as info:
        load_pairs(records, format="native")
    err = info.value
    assert (err.source, err.row, err.field) == ("<records>", 2, field)
    assert problem in str(err) and 'on_invalid="skip"' in str(err) and "got " in str(err)
    pairs, ledger = load_pairs(records, format="native", on_invalid="skip")
    assert len(pairs) == 2 and ledger.dropped == {f"{field}: {problem}": 1}
    assert ledger.examples[f"dropped: {field}: {problem}"] == ["<records> row 2"]
    assert balanced(ledger)


def test_the_error_message_reads_as_the_style_guide_asks(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [json.dumps(GOOD), json.dumps({**GOOD, "chosen": ""})])
    with pytest.raises(DataError) as info:
        load_pairs(path)
    assert str(info.value) == (
        f'{path} row 1, field "chosen": empty or whitespace-only: got \'\' (use on_invalid="skip" to count and skip)'
    )


def test_ids_come_from_the_record_or_the_location():
    pairs, _ = load_pairs([GOOD, {**GOOD, "id": "q7"}], format="native")
    assert [p.id for p in pairs] == ["<records>:0", "q7"]
    ranked = {"prompt": "p", "responses": ["a", "b", "c"], "scores": [3, 2, 1]}
    pairs, ledger = load_pairs([ranked])
    assert [p.id for p in pairs] == ["<records>:0/0", "<records>:0/1", "<records>:0/2"]
    assert (ledger.rows_read, ledger.kept, ledger.expanded) == (1, 3, 2)


def test_options_and_arguments_are_checked():
    with pytest.raises(ValueError, match=r"unknown format 'jsonl'; known: \[.*'native'"):
        load_pairs([GOOD], format="jsonl")
    with pytest.raises(ValueError, match=r"format 'native' has no option\(s\) \['policy'\]"):
        load_pairs([GOOD], policy="adjacent")  # detected native: a ranking option is refused, not ignored
    with pytest.raises(ValueError, match="on_invalid='warn'"):
        load_pairs([GOOD], on_invalid="warn")
    with pytest.raises(DataError, match=r"<records> row 0: no known format .*alpaca_eval"):
        load_pairs([{"question": "q"}])
    with pytest.raises(DataError, match="no readable records"):
        load_pairs([])
    assert load_pairs([], format="native")[1].rows_read == 0


def test_a_given_ledger_accumulates_over_several_loads():
    ledger = Ledger()
    load_pairs([GOOD, GOOD], ledger=ledger)
    _, same = load_pairs([GOOD, {**GOOD, "rejected": "4"}], on_invalid="skip", ledger=ledger)
    assert same is ledger and (ledger.rows_read, ledger.kept, ledger.n_dropped) == (4, 3, 1)


_response = st.sampled_from(["a", "b", "c", "d", "", "a "])


@st.composite
def _ranking_rows(draw) -> dict:
    k = draw(st.integers(0, 5))
    return {
        "prompt": draw(st.sampled_from(["p", " "])),
        "responses": draw(st.lists(_response, min_size=k, max_size=k)),
        "scores": draw(st.lists(st.sampled_from([0, 1, 2, math.nan]), min_size=k, max_size=k)),
    }


@given(st.lists(_ranking_rows(), min_size=1, max_size=6), st.sampled_from(["all_pairs", "best_vs_rest", "adjacent"]),
       st.sampled_from(["drop", "keep"]))
@settings(max_examples=80, deadline=None)
def test_the_ledger_balances_whatever_the_rows(rows, policy, ties):
    pairs, ledger = load_pairs(rows, format="ranking", on_invalid="skip", policy=policy, ties=ties)
    assert balanced(ledger) and ledger.kept == len(pairs)
    report = check_data(rows, format="ranking", policy=policy, ties=ties)
    assert report.pairs == len(pairs) and report.ledger.to_dict() == ledger.to_dict()


def test_grouped_formats_balance_with_merged_rows():
    def judge(q, a):
        return f"###The instruction to evaluate:\n{q}\n\n###Response to evaluate:\n{a}\n\n###Score Rubrics:\n."

    rows = [{"idx": i // 3, "instruction": judge(f"Q{i // 3}", f"a{i}"), "gpt4_score": [i % 3]} for i in range(9)]
    rows[4]["gpt4_score"] = [1.5, "x"]  # one invalid row: counted, and its group goes on without it
    pairs, ledger = load_pairs(rows, on_invalid="skip")
    # groups: 0 -> 3 responses (3 pairs), 1 -> 2 valid responses (1 pair), 2 -> 3 responses (3 pairs)
    assert (ledger.rows_read, ledger.merged, ledger.expanded, len(pairs)) == (9, 5, 4, 7)
    assert ledger.dropped == {"gpt4_score[1]: not a number": 1}
    assert [p.id for p in pairs[:3]] == ["<records>:group0/0", "<records>:group0/1", "<records>:group0/2"]
    assert balanced(ledger)


# ---- check_data ----------------------------------------------------------------------------------


def test_check_data_collects_every_problem_without_stopping(tmp_path):
    lines = [
        json.dumps(GOOD),
        json.dumps({**GOOD, "chosen": "", "margin": "big"}),  # two problems in one pair
        "not json",
        json.dumps({**GOOD, "rejected": "4"}),
        json.dumps({**GOOD, "margin": 1.0}),
    ]
    path = write_jsonl(tmp_path / "mixed.jsonl", lines)
    report = check_data(path)
    assert not report.ok and report.format_name == "native" and report.detected
    assert report.counts == {"chosen: empty or whitespace-only": 1, "margin: not a number": 1,
                             "invalid JSON": 1, "rejected: identical to chosen": 1}
    assert [(p.row, p.field) for p in report.problems] == [(1, "chosen"), (1, "margin"), (2, None), (3, "rejected")]
    assert (report.pairs, report.graded, report.ledger.n_dropped) == (2, 1, 3)  # the two-problem pair is one unit
    text = report.format(max_shown=2)
    assert "format 'native' (detected)" in text and "4 problems:" in text and "first 2 of 4:" in text
    assert f'{path} row 1, field "chosen": empty or whitespace-only' in text and text.endswith(
        '(load with on_invalid="skip" to count and skip them)')


def test_check_data_on_clean_data_is_ok():
    report = check_data([GOOD, {**GOOD, "rejected": "22"}], format="native")
    assert report.ok and report.pairs == 2 and not report.detected
    assert report.format().endswith("OK: no problems")


# ---- docs ----------------------------------------------------------------------------------------


def test_docs_name_only_code_that_exists():
    text = DOCS.read_text()
    for dotted in sorted(set(re.findall(r"`(marginkit(?:\.\w+)+)", text))):
        module, _, name = dotted.rpartition(".")
        try:
            importlib.import_module(dotted)
        except ModuleNotFoundError:
            assert hasattr(importlib.import_module(module), name), f"docs/data.md names {dotted}, which does not exist"
    for name in FORMATS:
        assert f"### `{name}`" in text, f"docs/data.md has no section for format {name!r}"
    for option in ("on_invalid", "all_pairs", "best_vs_rest", "adjacent", "marginkit data check", "rows_read", "merged"):
        assert option in text


def test_docs_examples_load_as_documented():
    """Each ```json example under a format heading loads with that format into the pairs listed after it."""
    text = DOCS.read_text()
    sections = re.split(r"^### `(\w+)`", text, flags=re.M)[1:]
    for name, body in zip(sections[::2], sections[1::2]):
        examples = re.findall(r"```json\n(.*?)\n```\ngives:\n```\n(.*?)\n```", body, flags=re.S)
        assert examples, f"section {name!r} has no example"
        for record_text, expected in examples:
            pairs, _ = load_pairs(json.loads(f"[{record_text}]"), format=name)
            assert [_compact(p) for p in pairs] == expected.splitlines(), name


def _compact(pair: Pair) -> str:
    """One pair as the docs show it: prompt | chosen > rejected [scores]."""
    text = f"{pair.prompt!r} | {pair.chosen!r} > {pair.rejected!r}"
    if pair.score_chosen is not None:
        text += f" [{pair.score_chosen:g} vs {pair.score_rejected:g}]"
    return text
