"""Atomic writes of a run's final files and folders: written beside the final name, then renamed (issue 14).

A crash or a full disk mid-write then leaves the previous file or folder (or none) under the final name,
never half of one; the temporary sibling is removed when the write fails. `os.replace` is atomic within
one file system, which a sibling shares. Standard library only: every layer may use it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_text_atomic", "write_file_atomic", "write_dir_atomic"]


def write_file_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` to write a temporary sibling of `path`, then rename it to `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """`path.write_text(text)`, atomically."""
    return write_file_atomic(path, lambda tmp: tmp.write_text(text))


def write_dir_atomic(directory: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` to fill a temporary sibling folder, then put it in place of `directory`.

    The old folder is first renamed aside and removed only after the new one is in place, so at every
    moment `directory` is either the complete old folder, absent for the instant between two renames,
    or the complete new one."""
    directory = Path(directory)
    tmp, old = directory.with_name(f"{directory.name}.tmp"), directory.with_name(f"{directory.name}.old")
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    try:
        tmp.mkdir(parents=True)
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory
