"""Data: the pair schema, loaders and converters, validation, the ledger, tokenisation and collation."""

from marginkit.data.formats import FORMATS, detect_format
from marginkit.data.io import Row, iter_rows, read_records
from marginkit.data.ledger import Ledger
from marginkit.data.load import CheckReport, OnInvalid, check_data, load_pairs
from marginkit.data.schema import DataError, Message, Pair, prompt_text
from marginkit.data.validate import Problem, RowError, validate_pair

__all__ = [
    "FORMATS", "CheckReport", "DataError", "Ledger", "Message", "OnInvalid", "Pair", "Problem", "Row", "RowError",
    "check_data", "detect_format", "iter_rows", "load_pairs", "prompt_text", "read_records", "validate_pair",
]
