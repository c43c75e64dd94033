"""Reading raw records, each with its file and 0-based row, from every container marginkit accepts.

Containers: `.jsonl` and `.jsonl.gz` (one JSON object per line; the row is the 0-based line index,
so line numbers stay true when blank lines are skipped), `.json` and `.json.gz` (a list of objects,
or an object with one list-valued key such as "data" or "train"; `split` picks the key when there
are several), `.parquet` (pyarrow), a Hugging Face `datasets` folder written by `save_to_disk`, a
`datasets.Dataset` or `DatasetDict` object (`split` picks the split), an in-memory list of dicts,
and a list of files read one after the other.

Problems with the source as a whole (missing file, unknown suffix, ambiguous JSON keys) raise
`DataError` at once. Problems with one row (a malformed JSON line, a line that is not UTF-8, a row
that is not an object)
are returned on that `Row` by `iter_rows`, so a loader can count them and go on; `read_records`
raises them instead.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marginkit.data.schema import DataError
from marginkit.data.validate import Problem

__all__ = ["Row", "Source", "iter_rows", "read_records", "source_name"]

# A path, several paths, records in memory, or a `datasets.Dataset` / `DatasetDict` (typed Any:
# datasets is imported only when such an object or folder is actually read).
Source = str | os.PathLike | Sequence[Any] | Any

_DATASETS_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_SPLIT_HINT = ("pick one: data.split=<name> (data.eval_split for data.eval) in a run config, --split <name> for "
               "data check, split=<name> in load_pairs")


@dataclass(frozen=True)
class Row:
    """One raw record and where it came from; `record` is None when `problem` says why."""

    source: str
    index: int
    record: dict[str, Any] | None
    problem: Problem | None = None

    @property
    def where(self) -> str:
        return f"{self.source} row {self.index}"


def _row(source: str, index: int, value: Any) -> Row:
    if isinstance(value, Mapping):
        return Row(source, index, dict(value))
    problem = Problem(None, "row is not a JSON object", value, detail=type(value).__name__)
    return Row(source, index, None, problem.at(source, index))


def _open_text(path: Path) -> Any:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _open_bytes(path: Path) -> Any:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb")


def _decode_line(raw: bytes, name: str, index: int) -> str | Row:
    """The line as text, or a Row whose problem names the first byte that is not UTF-8 (one bad byte costs
    its row only, so on_invalid="skip" can count it and go on)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        bad = raw[err.start:err.end]
        detail = f"byte 0x{bad.hex()} at line {index + 1}, byte {err.start + 1} of the line"
        problem = Problem(None, "not valid UTF-8", raw[max(0, err.start - 30):err.end + 10], detail,
                          hint="re-save the file as UTF-8")
        return Row(name, index, None, problem.at(name, index))


def _jsonl_rows(path: Path, name: str, split: str | None) -> Iterator[Row]:
    _no_split(name, split, "a JSONL file has no splits")
    # Read as bytes and decode each line, so a non-UTF-8 byte is that row's problem, not the whole file's.
    with _open_bytes(path) as lines:
        for index, raw in enumerate(lines):
            line = _decode_line(raw, name, index)
            if isinstance(line, Row):
                yield line
                continue
            if not line.strip():
                continue  # blank lines are not rows; `index` stays the 0-based line index
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                detail = f"line {index + 1} column {err.colno}: {err.msg}"
                yield Row(name, index, None, Problem(None, "invalid JSON", line.rstrip("\r\n"), detail).at(name, index))
                continue
            yield _row(name, index, value)


def _json_rows(path: Path, name: str, split: str | None) -> Iterator[Row]:
    with _open_text(path) as text:
        try:
            data = json.load(text)
        except json.JSONDecodeError as err:
            raise DataError(name, None, None, f"invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from err
    for index, value in enumerate(_json_list(data, name, split)):
        yield _row(name, index, value)


def _json_list(data: Any, name: str, split: str | None) -> list[Any]:
    """The list of records inside a JSON document: the document itself or one list-valued key."""
    if isinstance(data, list):
        _no_split(name, split, "the file holds a single list")
        return data
    if not isinstance(data, dict):
        raise DataError(name, None, None, f"top-level JSON is a {type(data).__name__}, expected a list or an object")
    lists = sorted(k for k, v in data.items() if isinstance(v, list))
    if split is not None:
        if split not in lists:
            raise DataError(name, None, None, f"no list-valued key {split!r}", f"keys holding lists: {lists}")
        return data[split]
    if len(lists) != 1:
        raise DataError(
            name, None, None, f"top-level object has {len(lists)} list-valued keys {lists}, expected one",
            "pass split=<key> to pick one",
        )
    return data[lists[0]]


def _parquet_rows(path: Path, name: str, split: str | None) -> Iterator[Row]:
    import pyarrow.parquet as pq  # imported here: reading JSONL must not pay for pyarrow

    _no_split(name, split, "a parquet file has no splits")
    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for value in batch.to_pylist():
            yield _row(name, index, value)
            index += 1


# suffix -> reader, longest suffix first so ".jsonl.gz" wins over ".gz" matches
_FILE_READERS: tuple[tuple[str, Callable[[Path, str, str | None], Iterator[Row]]], ...] = (
    (".jsonl.gz", _jsonl_rows),
    (".json.gz", _json_rows),
    (".parquet", _parquet_rows),
    (".jsonl", _jsonl_rows),
    (".json", _json_rows),
)


def _no_split(name: str, split: str | None, why: str) -> None:
    if split is not None:
        raise DataError(name, None, None, f"split={split!r} given but {why}", "leave split unset")


def _is_hf(obj: Any) -> bool:
    return type(obj).__module__.split(".")[0] == "datasets"


def _hf_rows(dataset: Any, name: str, split: str | None) -> Iterator[Row]:
    """Rows of a `datasets.Dataset`, or of one split of a `DatasetDict`."""
    if isinstance(dataset, Mapping):  # DatasetDict is a dict of split name -> Dataset
        splits = sorted(dataset)
        if split is None and len(splits) != 1:
            raise DataError(name, None, None, f"a DatasetDict with splits {splits}, and no split chosen", _SPLIT_HINT)
        split = splits[0] if split is None else split
        if split not in dataset:
            raise DataError(name, None, None, f"no split {split!r} in this DatasetDict (splits: {splits})", _SPLIT_HINT)
        dataset, name = dataset[split], f"{name}[{split}]"
    else:
        _no_split(name, split, "the dataset has no splits")
    for index, value in enumerate(dataset):
        yield _row(name, index, value)


def _path_rows(path: Path, split: str | None) -> Iterator[Row]:
    name = str(path)
    if path.is_dir():
        if not any((path / marker).exists() for marker in _DATASETS_MARKERS):
            raise DataError(
                name, None, None, "a folder that is not a `datasets` save_to_disk folder",
                "pass a file, or a list of files to read one after the other",
            )
        import datasets  # imported here: it is slow to import and only this source needs it

        yield from _hf_rows(datasets.load_from_disk(name), name, split)
        return
    if not path.exists():
        raise DataError(name, None, None, "no such file")
    for suffix, reader in _FILE_READERS:
        if path.name.endswith(suffix):
            try:
                yield from reader(path, name, split)
            except (OSError, UnicodeDecodeError) as err:
                raise DataError(name, None, None, f"cannot read the file: {err}") from err
            return
    known = [suffix for suffix, _ in _FILE_READERS]
    raise DataError(name, None, None, f"unknown file type {path.suffix!r}", f"known: {known} or a datasets folder")


def source_name(source: Source) -> str:
    """How errors and the ledger name a source."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if _is_hf(source):
        return f"<{type(source).__name__}>"
    if isinstance(source, Sequence) and source and isinstance(source[0], (str, os.PathLike)):
        return " + ".join(str(p) for p in source)
    return "<records>"


def iter_rows(source: Source, *, split: str | None = None) -> Iterator[Row]:
    """Every row of `source` in order; a malformed row comes back with `problem` set, never raised."""
    if isinstance(source, (str, os.PathLike)):
        yield from _path_rows(Path(source), split)
    elif _is_hf(source):
        yield from _hf_rows(source, source_name(source), split)
    elif isinstance(source, Sequence) and not isinstance(source, (bytes, str)):
        yield from _sequence_rows(source, split)
    else:
        raise DataError(
            source_name(source), None, None, f"cannot read a {type(source).__name__}",
            "pass a path, a list of paths, a list of dicts, or a datasets.Dataset / DatasetDict",
        )


def _sequence_rows(source: Sequence[Any], split: str | None) -> Iterator[Row]:
    if source and all(isinstance(item, (str, os.PathLike)) for item in source):
        for path in source:
            yield from _path_rows(Path(path), split)
        return
    _no_split("<records>", split, "in-memory records have no splits")
    for index, value in enumerate(source):
        yield _row("<records>", index, value)


def read_records(source: Source, *, split: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row, record) for every row of `source`; a malformed row raises DataError naming file and row."""
    for row in iter_rows(source, split=split):
        if row.problem is not None:
            raise row.problem.error()
        assert row.record is not None
        yield row.index, row.record
