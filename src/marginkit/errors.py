"""One-line messages for problems outside the config and the data: paths, files on disk, packages, disk space.

Config and data problems already have their own located errors (`ConfigError`, `DataError`). What is
left are the environment's problems, which would otherwise reach the user as a library traceback
(huggingface_hub's "Repo id must be in the form ...", safetensors' "invalid header length", a bare
`NotADirectoryError`). `UserError` carries such a problem as one line (what, where, what to do); the
CLI prints it and exits non-zero. `explain_os_error` turns the OSErrors a run can meet while writing
(a full disk, an output folder under a file or a read-only place) into a `UserError`; the original
exception stays as `__cause__`. Standard library only: every layer may use it.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["UserError", "explain_os_error", "blocking_file", "missing_model_error", "loading_model"]

_WRITE_ERRNOS = {errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EROFS, errno.EEXIST}


class UserError(Exception):
    """A problem the user fixes outside the config and the data (a path, a file, a package, disk space).

    The message is one line: what went wrong, where (the path), and what to do."""


def blocking_file(path: str | Path) -> Path | None:
    """The nearest ancestor of `path` (or `path` itself) that exists as a file, which makes a folder there
    impossible; None when every existing ancestor is a folder."""
    for candidate in (Path(path), *Path(path).parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def missing_model_error(name_or_path: str) -> UserError | None:
    """A UserError when `name_or_path` cannot be a hub name and is not a folder; None when it may be a hub name.

    A hub id is "name" or "namespace/name"; an absolute path, a path starting with "." or "~", or one with
    two or more slashes can only be a local folder."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return None
    local_only = name_or_path.startswith((".", "~", "/")) or name_or_path.count("/") > 1
    if not local_only:
        return None
    return UserError(f"model folder {name_or_path} does not exist: give an existing folder (a hub name such as "
                     "org/model is downloaded only with network access or found in the HF cache)")


@contextmanager
def loading_model(name_or_path: str) -> Iterator[None]:
    """Around `from_pretrained` calls: a folder that does not exist, or a truncated or corrupt safetensors
    file, raises a one-line UserError (the library's exception kept as __cause__)."""
    missing = missing_model_error(name_or_path)
    if missing is not None:
        raise missing
    try:
        yield
    except Exception as err:
        if type(err).__name__ != "SafetensorError":  # safetensors' one exception type, whatever the damage
            raise
        raise UserError(f"{_bad_weights_file(name_or_path)}: truncated or corrupt safetensors file ({err}); copy "
                        "or save the model folder again") from err


def _bad_weights_file(folder: str) -> str:
    """The first *.safetensors file in `folder` whose header cannot be read, or the folder itself."""
    from safetensors import safe_open  # imported here: only a failed load gets this far

    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="numpy"):
                pass
        except Exception:
            return str(path)
    return f"model folder {folder}"


def explain_os_error(err: OSError, output_dir: str | Path | None = None) -> UserError | None:
    """A one-line UserError for an OSError met while writing a run's files, or None for other OSErrors.

    output_dir: the run folder being written (it names the folder and finds its last complete checkpoint
    when the error carries no file name)."""
    where = err.filename or output_dir
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"no space left on the device while writing {where or 'the output'}: "
                         f"{_checkpoint_state(output_dir)}; free some space (or choose another output folder)")
    if err.errno in _WRITE_ERRNOS and where is not None:
        blocker = blocking_file(where)
        if blocker is not None:
            return UserError(f"cannot create the folder {where}: {blocker} is a file, not a folder; choose another "
                             "output folder")
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return UserError(f"cannot access {where}: {err.strerror}; use a path you have permission for (for "
                             "outputs, a folder you can write to)")
    return None


def _checkpoint_state(output_dir: str | Path | None) -> str:
    """Whether a complete checkpoint is left to resume from (checkpoints are written aside, then renamed)."""
    if output_dir is None:
        return "nothing was resumable"
    done = sorted(p for p in (Path(output_dir) / "checkpoints").glob("step-*") if not p.name.endswith(".tmp"))
    if not done:
        return f"no checkpoint was complete yet in {Path(output_dir) / 'checkpoints'}"
    return (f"the previous checkpoint {done[-1]} is intact (resume from it with train.resume_from=latest once "
            "there is space)")
