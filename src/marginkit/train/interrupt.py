"""Stopping a run cleanly on SIGINT (Ctrl-C) or SIGTERM (a scheduler's kill): finish the step, save, say how to resume.

Issue 14: a Ctrl-C used to end in a KeyboardInterrupt traceback with nothing saved (with the default
save_every=0, all training was lost). While the engine trains, `StopSignals` turns the first signal into a
flag the loop reads after each optimizer step; the engine then writes a checkpoint, the trainer saves the
model folder and raises `TrainingInterrupted`, whose one-line message the CLI prints before exiting
128 + the signal's number, as a shell reports a process a signal ended.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType, TracebackType

__all__ = ["TrainingInterrupted", "StopSignals"]


class TrainingInterrupted(Exception):
    """Training was stopped by SIGINT or SIGTERM after the current optimizer step, with a resumable checkpoint
    and the model folder saved. The message is one line that says how to resume; `exit_code` is 128 + the
    signal's number (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int, step: int, total: int, checkpoint: Path | None, model_dir: Path):
        self.exit_code, self.checkpoint, self.model_dir = 128 + int(signum), checkpoint, model_dir
        resume = (f"checkpoint {checkpoint}; resume with the same command and train.resume_from=latest"
                  if checkpoint is not None else "no checkpoint (this trainer saves none)")
        super().__init__(f"interrupted by {signal.Signals(signum).name} after optimizer step {step} of {total}: "
                         f"model saved to {model_dir}, {resume}")


class StopSignals:
    """A context manager: while it is active, SIGINT and SIGTERM only record the signal in `received` (and
    print `notice` when `announce`); a second signal raises KeyboardInterrupt at once. The previous handlers
    come back on exit. Only the main thread can install handlers; in another thread (a study's worker)
    nothing changes and `received` stays None."""

    notice = ("{name}: finishing this optimizer step, then saving a checkpoint and the model (send it again to "
              "stop at once, saving nothing)")

    def __init__(self, announce: bool = True):
        self.announce = announce
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        if self.announce:
            from tqdm.auto import tqdm  # writes above an open progress bar

            tqdm.write(self.notice.format(name=signal.Signals(signum).name))

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)
        self._previous = {}
