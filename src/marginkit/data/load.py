"""Loading preference pairs from a file or dataset: read rows, convert by format, validate, count in the ledger.

`load_pairs` is what training and evaluation call; `check_data` backs `marginkit data check FILE`
and scans everything, collecting every problem instead of stopping at the first.

Invalid input has one switch, `on_invalid` ("error" or "skip"; there is no separate `strict`
flag): "error" raises a `DataError` naming file, row and field, showing the value and the fix;
"skip" counts the unit in the ledger under its reason, with "file row N" among the examples, and
goes on. A unit is one candidate pair, or a whole row (or pooled group) that could not be converted.
The ledger then balances:

    rows_read - merged + expanded == kept + n_dropped

where `expanded` counts every candidate pair beyond the first of its row or group, and `merged`
counts rows pooled into an earlier row's group (grouped formats only). Pairs without an id get
"<file name>:<row>" (grouped formats: "<file name>:group<g>"), with "/k" appended when a row or
group gives several candidate pairs.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from marginkit.data.formats import FORMATS, Converted, Format, Graded, build_options, detect_format
from marginkit.data.io import Row, Source, iter_rows, source_name
from marginkit.data.ledger import Ledger
from marginkit.data.schema import DataError, Pair
from marginkit.data.validate import Problem, RowError, validate_pair

__all__ = ["SKIP_HINT", "CheckConfig", "CheckReport", "OnInvalid", "check_data", "load_pairs"]

OnInvalid = Literal["error", "skip"]
SKIP_HINT = 'use on_invalid="skip" to count and skip'

Report = Callable[[list[Problem]], None]  # receives every problem of one invalid unit, located


def _first_record(rows: Iterator[Row], name: str) -> tuple[Row, Iterator[Row]]:
    """The first row holding a record, and an iterator that replays every row from the start."""
    seen = []
    for row in rows:
        seen.append(row)
        if row.record is not None:
            return row, itertools.chain(seen, rows)
    raise DataError(name, None, None, "no readable records, so no format can be detected", 'pass format="..."')


def _resolve_format(format: str, rows: Iterator[Row], name: str) -> tuple[str, Iterator[Row]]:
    if format != "auto":
        if format not in FORMATS:
            raise ValueError(f"unknown format {format!r}; known: {sorted(FORMATS)} or 'auto'")
        return format, rows
    first, rows = _first_record(rows, name)
    assert first.record is not None
    try:
        return detect_format(first.record), rows
    except ValueError as err:
        raise DataError(first.source, first.index, None, str(err)) from err


def _base_id(source: str) -> str:
    return Path(source).name if not source.startswith("<") else source


def _accept(out: Converted, row: Row, base_id: str, ledger: Ledger, report: Report, origins: list[Row]) -> list[Pair]:
    """Count one row's (or group's) candidate pairs, validate the pairs, keep the valid ones (their row
    appended to `origins`)."""
    units = len(out.pairs) + len(out.dropped)
    assert units > 0, "a converter returned no pairs without raising RowError"
    ledger.expanded += units - 1
    for reason in out.dropped:
        ledger.drop(reason, row.where)
    kept = []
    for k, pair in enumerate(out.pairs):
        pair_id = pair.id if pair.id is not None else base_id
        pair = replace(pair, id=f"{pair_id}/{k}" if units > 1 else pair_id)
        problems = validate_pair(pair)
        if problems:
            detail = f"pair {pair.id}" if units > 1 else ""
            report([replace(p.at(row.source, row.index), detail=p.detail or detail) for p in problems])
            continue
        ledger.keep()
        kept.append(pair)
        origins.append(row)
    return kept


def _finish_groups(
    groups: dict[Hashable, list[tuple[Row, tuple[Graded, ...]]]], fmt: Format, options: Any, ledger: Ledger, report: Report,
    origins: list[Row],
) -> list[Pair]:
    assert fmt.finish_group is not None, "a format returned a group but has no finish_group"
    pairs = []
    for g, (key, members) in enumerate(groups.items()):
        first = members[0][0]
        ledger.merged += len(members) - 1
        responses = [response for _, row_responses in members for response in row_responses]
        try:
            out = fmt.finish_group(key, responses, options)
        except RowError as err:
            report([err.problem.at(first.source, first.index)])
            continue
        pairs += _accept(out, first, f"{_base_id(first.source)}:group{g}", ledger, report, origins)
    return pairs


def _scan(
    source: Source, format: str, split: str | None, format_options: Mapping[str, Any], ledger: Ledger, report: Report
) -> tuple[str, list[Pair], list[Row]]:
    """(format name, valid pairs, each pair's row): every row read, converted, validated and counted; problems
    reported."""
    name, rows = _resolve_format(format, iter_rows(source, split=split), source_name(source))
    fmt = FORMATS[name]
    options = build_options(name, fmt.options, format_options)
    pairs: list[Pair] = []
    origins: list[Row] = []
    groups: dict[Hashable, list[tuple[Row, tuple[Graded, ...]]]] = {}
    # A bar only when reading takes over 5 s (100k pairs: ~10 s here, silent before; issue 14).
    for row in tqdm(rows, desc=f"reading {source_name(source)}", unit=" rows", delay=5, mininterval=2, leave=False):
        ledger.read()
        if row.record is None:
            assert row.problem is not None
            report([row.problem])
            continue
        try:
            out = fmt.convert(row.record, options)
        except RowError as err:
            report([err.problem.at(row.source, row.index)])
            continue
        if out.group is not None:
            groups.setdefault(out.group, []).append((row, out.responses))
        else:
            pairs += _accept(out, row, f"{_base_id(row.source)}:{row.index}", ledger, report, origins)
    if groups:
        pairs += _finish_groups(groups, fmt, options, ledger, report, origins)
    return name, pairs, origins


def load_pairs(
    source: Source,
    format: str = "auto",
    on_invalid: OnInvalid = "error",
    ledger: Ledger | None = None,
    *,
    split: str | None = None,
    **format_options: Any,
) -> tuple[list[Pair], Ledger]:
    """Every valid pair of `source`, and the ledger that accounts for every row.

    source:     a path (.jsonl, .jsonl.gz, .json, .json.gz, .parquet, or a datasets save_to_disk
                folder), a list of paths read in order, a list of dicts, or a datasets.Dataset /
                DatasetDict (see marginkit.data.io).
    format:     a key of marginkit.data.formats.FORMATS, or "auto" to detect it from the first record.
    on_invalid: "error" raises DataError at the first invalid unit; "skip" counts it in the ledger.
    ledger:     counts are added to this ledger (to account for several files together); a new one if None.
    split:      the DatasetDict split, or the list-valued key of a JSON object.
    format_options: the chosen format's options (its options dataclass); unknown names raise.
    """
    if on_invalid not in ("error", "skip"):
        raise ValueError(f'on_invalid={on_invalid!r}: expected "error" or "skip"')
    ledger = Ledger() if ledger is None else ledger

    def report(problems: list[Problem]) -> None:
        if on_invalid == "error":
            raise problems[0].error(SKIP_HINT)
        ledger.drop(problems[0].reason, problems[0].where)

    _, pairs, _ = _scan(source, format, split, format_options, ledger, report)
    return pairs, ledger


@dataclass
class CheckReport:
    """What `check_data` found: every problem located, counts per reason, and pair counts."""

    source: str
    format_name: str
    detected: bool  # True when format="auto" picked format_name
    ledger: Ledger
    problems: list[Problem] = field(default_factory=list)
    pairs: int = 0  # valid pairs
    graded: int = 0  # valid pairs with scores or a margin

    @property
    def ok(self) -> bool:
        """No invalid row or pair (ties dropped by policy are not problems)."""
        return not self.problems

    @property
    def counts(self) -> Counter:
        """Problems per reason (a pair with two problems counts under both)."""
        return Counter(p.reason for p in self.problems)

    def format(self, max_shown: int = 20) -> str:
        """The console report: format, ledger summary, counts per reason, the first located problems."""
        how = "detected" if self.detected else "given"
        lines = [
            f"{self.source}: format {self.format_name!r} ({how})",
            self.ledger.summary(),
            f"{self.pairs} valid pairs, {self.graded} with scores or a margin",
        ]
        if self.ok:
            return "\n".join([*lines, "OK: no problems"])
        lines.append(f"{len(self.problems)} problems:")
        lines += [f"  {n:6d} x {reason}" for reason, n in self.counts.most_common()]
        shown = self.problems[:max_shown]
        lines.append(f"first {len(shown)} of {len(self.problems)}:")
        lines += [f"  {p.describe()}" for p in shown]
        lines.append(f"NOT OK: {len(self.problems)} problems (load with on_invalid=\"skip\" to count and skip them)")
        return "\n".join(lines)


@dataclass
class CheckConfig:
    """`marginkit data check`: the file to validate and its format."""

    file: str = field(default="", metadata={"help": "Pairs file (JSONL/JSON/Parquet/HF dataset folder).",
                                            "positional": True, "required": True})
    format: str = field(default="auto", metadata={"help": "Input format (see docs/data.md); auto detects it."})
    split: str | None = field(default=None, metadata={
        "help": "The split to check in a `datasets` DatasetDict folder, or the list-valued key of a JSON object."})


def check_data(source: Source, format: str = "auto", *, split: str | None = None, **format_options: Any) -> CheckReport:
    """Scan all of `source` and collect every problem; arguments as for `load_pairs`.

    Source-level errors (missing file, no format matches, unknown option) still raise, since
    nothing can be checked past them.
    """
    ledger = Ledger()
    problems: list[Problem] = []

    def report(unit_problems: list[Problem]) -> None:
        problems.extend(unit_problems)
        ledger.drop(unit_problems[0].reason, unit_problems[0].where)

    name, pairs, origins = _scan(source, format, split, format_options, ledger, report)
    partial = _partly_graded(pairs)
    for k, unit_problems in sorted(partial.items()):
        located = [p.at(origins[k].source, origins[k].index) for p in unit_problems]
        ledger.kept -= 1  # counted as kept by the scan; now dropped under its reason, so the ledger still balances
        report(located)
    pairs = [p for k, p in enumerate(pairs) if k not in partial]
    graded = sum(1 for p in pairs if p.score_chosen is not None or p.margin is not None)
    return CheckReport(source_name(source), name, format == "auto", ledger, problems, len(pairs), graded)


# (the field named in the problem, the fields that must all be present, what the data calls them). Not the
# margin: a file may give margins for some pairs only (a TRL margin column is numeric throughout).
_GRADES = (("score_chosen", ("score_chosen", "score_rejected"), "scores"),
           ("gold_chosen", ("gold_chosen", "gold_rejected"), "gold rewards"))


def _partly_graded(pairs: list[Pair]) -> dict[int, list[Problem]]:
    """{pair index: problems} for pairs without scores (or gold rewards) in data where other pairs have
    them. Parquet written by pandas stores a NaN score as null, which reads back as "no score", so only the
    rest of the file shows that the value is missing; a margin strategy reading it would stop training there."""
    found: dict[int, list[Problem]] = {}
    for name, fields, what in _GRADES:
        missing = [k for k, p in enumerate(pairs) if any(getattr(p, f) is None for f in fields)]
        if not missing or len(missing) == len(pairs):
            continue
        problem = Problem(name, f"missing (null or NaN) while other pairs have {what}",
                          detail=f"{len(pairs) - len(missing)} of {len(pairs)} valid pairs have them",
                          hint="fill it in or drop the row; pandas writes NaN to Parquet as null")
        for k in missing:
            found.setdefault(k, []).append(problem)
    return found
