"""Messages instead of tracebacks (issue 14): each problem a user meets ends in one line on stderr (what,
where, what to do) and a non-zero exit from `marginkit`, the library's exception kept as __cause__.

Each test runs the CLI in-process (`marginkit.cli.main`), or in a subprocess where a pipe is needed, and
checks the line and the exit code."""

from __future__ import annotations

import errno
import fcntl
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import transformers

from marginkit.cli import main
from marginkit.data.world import WorldConfig, make_world
from marginkit.errors import UserError, explain_os_error
from marginkit.models.reward import ModelConfig, load_reward_model
from marginkit.models.tiny import build_word_tokenizer, make_tiny_model_dir


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny world (32 train pairs), a tiny GPT-NeoX folder and a run.yaml: 2 steps of 16 pairs."""
    root = tmp_path_factory.mktemp("messages")
    world = make_world(WorldConfig(seed=3, n_train=32, n_val=8, n_test=8))
    world.save(root / "world")
    base = make_tiny_model_dir(root / "base", build_word_tokenizer(world.vocabulary()), hidden_size=32)
    (root / "run.yaml").write_text(
        f"model: {{name_or_path: {base}}}\ndata: {{train: {root / 'world' / 'train.jsonl'}}}\n"
        "train: {batch_size: 16, learning_rate: 1e-3, progress_bar: false, log_every: 1}\n")
    return root, base


def _train(root: Path, *overrides: str) -> int:
    return main(["train-rm", "--config", str(root / "run.yaml"), *overrides])


def _one_line(capsys) -> str:
    """The last stderr line; the message must be one line (a traceback would end in the exception's)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


# a. a model path that does not exist: not HF's "Repo id must be in the form ..."
def test_missing_model_folder(files, tmp_path, capsys):
    root, _ = files
    assert _train(root, f"train.output_dir={tmp_path / 'run'}", f"model.name_or_path={tmp_path / 'nope'}") == 2
    line = _one_line(capsys)
    assert line == (f"error: model folder {tmp_path / 'nope'} does not exist: give an existing folder (a hub name such "
                    "as org/model is downloaded only with network access or found in the HF cache)")
    assert main(["eval-rm", "--model", "runs/rm/model", "--data", str(root / "world" / "test.jsonl")]) == 2
    assert "model folder runs/rm/model does not exist" in _one_line(capsys)


# a, b for policies: train-sft / train-dpo load causal LMs through models/policy.py
def test_missing_or_corrupt_policy_folder(files, tmp_path, capsys):
    root, base = files
    sft = ["train-sft", f"data.train={root / 'world' / 'train.jsonl'}", "train.progress_bar=false"]
    assert main([*sft, f"train.output_dir={tmp_path / 'a'}", f"model.name_or_path={tmp_path / 'nope'}"]) == 2
    assert _one_line(capsys).startswith(f"error: model folder {tmp_path / 'nope'} does not exist: give an existing")
    bad = shutil.copytree(base, tmp_path / "model")
    (bad / "model.safetensors").write_bytes((bad / "model.safetensors").read_bytes()[:1000])
    assert main([*sft, f"train.output_dir={tmp_path / 'b'}", f"model.name_or_path={bad}"]) == 2
    assert _one_line(capsys).startswith(f"error: {bad / 'model.safetensors'}: truncated or corrupt safetensors file (")


# b. a truncated or corrupt safetensors file in a model folder
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_safetensors(files, tmp_path, capsys, damage):
    root, base = files
    bad = shutil.copytree(base, tmp_path / "model")
    weights = bad / "model.safetensors"
    if damage == "truncated":  # header intact, tensors cut off (an interrupted copy)
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:
        weights.write_bytes(b"\x00\x01not a safetensors file" * 10)
    assert main(["eval-rm", "--model", str(bad), "--data", str(root / "world" / "test.jsonl")]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"error: {weights}: truncated or corrupt safetensors file (")
    assert line.endswith("); copy or save the model folder again")
    with pytest.raises(UserError) as info:
        load_reward_model(ModelConfig(name_or_path=str(bad)))
    assert type(info.value.__cause__).__name__ == "SafetensorError"  # the library's exception is kept


# c. an output folder that cannot be created (root ignores chmod, so: a folder under a regular file)
def test_output_folder_under_a_file(files, tmp_path, capsys):
    root, _ = files
    (tmp_path / "somefile").write_text("")
    assert _train(root, f"train.output_dir={tmp_path / 'somefile' / 'x'}") == 2
    assert _one_line(capsys) == (f"error: cannot create the folder {tmp_path / 'somefile' / 'x'}: {tmp_path / 'somefile'} "
                                 "is a file, not a folder; choose another output folder")
    assert not list(tmp_path.iterdir())[1:]  # refused before anything was written
    # eval-rm refuses at start too, not after scoring every pair
    assert main(["eval-rm", "--model", str(tmp_path / "never_loaded"), "--data", str(root / "world" / "test.jsonl"),
                 "--out", str(tmp_path / "somefile" / "eval")]) == 2
    assert "somefile is a file, not a folder" in _one_line(capsys)
    # a write that fails later (world make's --out is not a config field, so no check at start) gets one line too
    assert main(["world", "make", "--out", str(tmp_path / "somefile" / "world"), "n_train=8", "n_val=4",
                 "n_test=4"]) == 2
    assert _one_line(capsys).startswith(f"error: cannot create the folder {tmp_path / 'somefile' / 'world'}")


def test_permission_and_other_os_errors(tmp_path):
    denied = explain_os_error(PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "ro" / "x")))
    assert str(denied) == (f"cannot access {tmp_path / 'ro' / 'x'}: Permission denied; use a path you have "
                           "permission for (for outputs, a folder you can write to)")
    assert explain_os_error(OSError(errno.EIO, "Input/output error", "x")) is None  # not ours: the traceback stays


# d. a full disk at a checkpoint or at the final save
@pytest.mark.parametrize("fail_at", ["checkpoint", "final"])
def test_disk_full(files, tmp_path, capsys, monkeypatch, fail_at):
    root, _ = files
    out = tmp_path / "run"
    save = transformers.PreTrainedModel.save_pretrained

    def save_or_fill_disk(self, path, *args, **kwargs):
        final = "checkpoints" not in Path(path).parts
        if (fail_at == "final") == final and (final or "step-000002" in str(path)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(self, path, *args, **kwargs)

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", save_or_fill_disk)
    assert _train(root, f"train.output_dir={out}", "train.save_every=1") == 2
    intact = out / "checkpoints" / ("step-000001" if fail_at == "checkpoint" else "step-000002")
    assert _one_line(capsys) == (
        f"error: no space left on the device while writing {out}: the previous checkpoint {intact} is intact "
        "(resume from it with train.resume_from=latest once there is space); free some space (or choose another "
        "output folder)")
    assert (intact / "trainer_state.pt").exists()


# e. report_to=[none] is "no tracker"; a tracker that is not installed fails at start
def test_report_to_none_and_missing_tracker(files, tmp_path, capsys):
    root, _ = files
    assert _train(root, f"train.output_dir={tmp_path / 'none'}", "train.report_to=[none]") == 0
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        pytest.skip("tensorboard is installed here")
    capsys.readouterr()
    assert _train(root, f"train.output_dir={tmp_path / 'tb'}", "train.report_to=[tensorboard]") == 2
    assert _one_line(capsys) == ("error: train.report_to=['tensorboard']: tensorboard is not installed, so nothing "
                                 "would be logged to it; pip install tensorboard (or train.report_to=[none]: "
                                 "metrics.jsonl is always written)")
    assert not (tmp_path / "tb" / "metrics.jsonl").exists()


# f. resume_from=latest with no checkpoint
def test_resume_latest_without_checkpoint(files, tmp_path, capsys):
    root, _ = files
    assert _train(root, f"train.output_dir={tmp_path / 'run'}", "train.resume_from=latest") == 2
    line = _one_line(capsys)
    assert line.startswith(f"error: train.resume_from=latest: {tmp_path / 'run' / 'checkpoints'} holds no checkpoint")
    assert "start without train.resume_from" in line


# g. `marginkit report` on a missing folder
def test_report_on_missing_folder(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothere")]) == 2
    assert _one_line(capsys) == (f"error: report: {tmp_path / 'nothere'} does not exist; give run folders (a train-rm "
                                 "train.output_dir, or a demo or eval-rm --out folder)")


# h. a non-UTF-8 byte in a JSONL file: its row is reported, and data.on_invalid=skip skips and counts it
def test_non_utf8_byte_in_jsonl(files, tmp_path, capsys):
    root, _ = files
    lines = (root / "world" / "train.jsonl").read_bytes().splitlines(keepends=True)
    lines[5] = lines[5].replace(b'"chosen": "', b'"chosen": "\xff', 1)
    data = tmp_path / "bad.jsonl"
    data.write_bytes(b"".join(lines))
    assert _train(root, f"train.output_dir={tmp_path / 'strict'}", f"data.train={data}") == 2
    line = _one_line(capsys)
    assert line.startswith(f"error: {data} row 5: not valid UTF-8 (byte 0xff at line 6, byte ")
    assert line.endswith("(re-save the file as UTF-8; set data.on_invalid=skip to count and skip)")
    assert _train(root, f"train.output_dir={tmp_path / 'skip'}", f"data.train={data}", "data.on_invalid=skip") == 0
    ledger = json.loads((tmp_path / "skip" / "ledger.json").read_text())
    assert (ledger["rows_read"], ledger["kept"], ledger["dropped"]) == (32, 31, {"not valid UTF-8": 1})
    assert main(["data", "check", str(data)]) == 1
    assert f"{data} row 5: not valid UTF-8" in capsys.readouterr().out


# i. a `datasets` DatasetDict folder: the splits are listed; data.split picks one
def test_dataset_dict_folder_needs_a_split(files, tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    root, _ = files
    rows = [json.loads(x) for x in (root / "world" / "train.jsonl").read_text().splitlines()]
    folder = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list(rows[:8])}).save_to_disk(str(folder))
    capsys.readouterr()
    assert _train(root, f"train.output_dir={tmp_path / 'no_split'}", f"data.train={folder}") == 2
    assert _one_line(capsys) == (
        f"error: {folder}: a DatasetDict with splits ['test', 'train'], and no split chosen (pick one: "
        "data.split=<name> (data.eval_split for data.eval) in a run config, --split <name> for data check, "
        "split=<name> in load_pairs)")
    assert _train(root, f"train.output_dir={tmp_path / 'run'}", f"data.train={folder}", "data.split=train",
                  f"data.eval={folder}", "data.eval_split=test") == 0
    assert json.loads((tmp_path / "run" / "ledger.json").read_text())["kept"] == 32
    assert json.loads((tmp_path / "run" / "ledger_eval.json").read_text())["kept"] == 8
    assert main(["data", "check", str(folder), "--split", "test"]) == 0


# j. a NaN score in Parquet is caught by `data check`, not only by training
def test_nan_score_in_parquet(tmp_path, capsys):
    pd = pytest.importorskip("pandas")
    nan = float("nan")
    frame = pd.DataFrame({"prompt": ["p", "q", "r"], "chosen": ["a", "b", "c"], "rejected": ["d", "e", "f"],
                          "score_chosen": [8.0, 7.0, nan], "score_rejected": [2.0, 3.0, nan]})
    path = tmp_path / "scores.parquet"
    frame.to_parquet(path)  # pandas writes NaN as null: row 2 reads back as a pair without scores
    assert main(["data", "check", str(path)]) == 1
    out = capsys.readouterr().out
    assert (f'{path} row 2, field "score_chosen": missing (null or NaN) while other pairs have scores (2 of 3 valid '
            "pairs have them) (fill it in or drop the row; pandas writes NaN to Parquet as null)") in out
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["p", "q"], "chosen": ["a", "b"], "rejected": ["d", "e"],
                             "score_chosen": [8.0, nan], "score_rejected": [2.0, 3.0]}), path)  # a real NaN
    assert main(["data", "check", str(path)]) == 1
    assert f'{path} row 1, field "score_chosen": not finite: got nan' in capsys.readouterr().out


# k. `marginkit config | head`: no BrokenPipe traceback
def test_closed_pipe_is_quiet(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "marginkit.cli", "config"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    if hasattr(fcntl, "F_SETPIPE_SZ"):  # a one-page pipe: the ~60 kB listing cannot fit before the reader leaves
        fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, 4096)
    first = proc.stdout.readline()
    proc.stdout.close()  # what `head -n 1` does after its line
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert first.startswith(b"# marginkit ")
    assert proc.wait(timeout=120) == 1
    assert err == ""  # no traceback, no "Exception ignored ... BrokenPipeError"
