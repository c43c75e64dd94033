"""`marginkit report` (report/html.py): one offline HTML page with every section and embedded PNGs.

The run folder is built like the demo's (one subfolder per strategy) from real writers: metrics lines
as the engine logs them, an eval report from evaluate.metrics, alerts.jsonl lines as the monitor
writes them, and bon_results.json from evaluate.bon.
"""

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from marginkit.cli import main
from marginkit.evaluate import metrics as M
from marginkit.evaluate.bon import best_of_n_sweep
from marginkit.report.html import collect_runs, write_report
from marginkit.report.plots import plot_reliability

SECTIONS = ("summary", "training", "histograms", "buckets", "alerts", "bon", "figures")


def _eval_report(gap: np.ndarray, gold_gap: np.ndarray) -> dict:
    true_gap_signed = np.where(gold_gap > 0, gap, -gap)
    return {"n_pairs": gap.size, "accuracy": M.accuracy_with_ci(gap, n_boot=50).to_dict(),
            "by_abs_gap": M.accuracy_by_bucket(gap, np.abs(gap), 4).to_dict(), "by_label": None,
            "by_gold": M.accuracy_by_bucket(true_gap_signed, np.abs(gold_gap), 4).to_dict(),
            "gold_accuracy": M.accuracy_with_ci(true_gap_signed, n_boot=50).to_dict(),
            "distribution": M.gap_distribution(gap).to_dict(), "calibration": M.calibration(gap).to_dict()}


def _metrics(path: Path, slope: float) -> None:
    rows = [{"step": s, "epoch": 0, "loss": 0.69 - slope * s, "rewards/accuracies": 0.5 + slope * s,
             "rewards/margins": 2 * slope * s, "target_margins/mean": 0.5} for s in range(1, 11)]
    rows.append({"step": 10, "epoch": 1, "eval_loss": 0.6, "eval_rewards/accuracies": 0.6})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report") / "demo"
    rng = np.random.default_rng(0)
    gold = rng.normal(size=200)
    for i, name in enumerate(("bt", "fixed")):
        (root / name / "model" / "eval").mkdir(parents=True)
        _metrics(root / name / "metrics.jsonl", 0.01 * (i + 1))
        gap = gold + rng.normal(scale=1.0 + i, size=200)
        (root / name / "model" / "eval" / "test.json").write_text(json.dumps(_eval_report(gap, gold)))
    alerts = [{"step": 3, "check": "explosion", "severity": "warn", "message": "gap <grew> fast", "values": {}},
              {"step": 7, "check": "stuck", "severity": "stop", "message": "loss at ln 2", "values": {"loss": 0.69}}]
    (root / "fixed" / "alerts.jsonl").write_text("".join(json.dumps(a) + "\n" for a in alerts) + "not json\n")
    for run in ("bon", "bon_seed1"):  # two runs of the same RMs and N: also summarised across runs
        scores = {"bt": rng.normal(size=(20, 8)), "fixed": rng.normal(size=(20, 8))}
        bon = best_of_n_sweep(scores, rng.normal(size=(20, 8)), [1, 2, 4, 8], n_boot=50).to_dict()
        bon.update({"judge": {"kind": "world"}, "prompts": "world:test"})
        (root / run).mkdir()
        (root / run / "bon_results.json").write_text(json.dumps(bon))
    (root / "summary.json").write_text(json.dumps([{"strategy": "bt", "acc_true": 0.61},
                                                   {"strategy": "fixed", "acc_true": 0.63}]))
    plot_reliability({"bt": M.calibration(gold)}, root / "reliability.png")  # a figure the run saved
    return root


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_page_has_every_section_and_embedded_pngs(run_dir, tmp_path):
    out = write_report([run_dir], tmp_path / "r" / "report.html", title="demo <report>")
    page = out.read_text()
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in page and f'href="#{sid}"' in page
    assert "<title>demo &lt;report&gt;</title>" in page
    images = _images(page)
    # training: 4 metric panels; histograms: 1; buckets: |Δ| and |true gap|, and the reliability diagram drawn
    # from the eval reports; bon: curves + win rates for each of the 2 runs and for the two together. The run's
    # own reliability.png repeats that diagram: named, not shown again (issue 14: the demo's page was ~12,000 px).
    assert len(images) == 4 + 1 + 3 + 3 * 2
    assert "Not repeated here (drawn above from the same data): demo/reliability.png." in page
    # Readers get the summary's columns explained (tooltip and glossary) and the margin runs' loss explained.
    assert '<th title="pairwise accuracy against the gold world' in page and "<dt>acc_true</dt>" in page
    assert "includes its margin term" in page
    assert all(img.startswith(b"\x89PNG\r\n\x1a\n") and len(img) > 1000 for img in images)
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing loaded from elsewhere: readable offline
    # Alerts: both rows, escaped, with severity classes; the unreadable line is listed, not dropped.
    assert 'class="sev-stop"' in page and "gap &lt;grew&gt; fast" in page and "1 × stop, 1 × warn" in page
    assert "alerts.jsonl line 3: invalid JSON" in page
    # Best-of-N tables: N=1 is an exact tie between any two RMs.
    assert "0.500 [0.500, 0.500] (0/20/0)" in page and "Over-optimisation" in page
    assert "Across 2 runs: demo/bon, demo/bon_seed1" in page and "95% t-interval over 2 runs" in page
    # Summary table and the last logged training values.
    assert "<td>fixed</td><td class=\"num\">0.63</td>" in page
    # (headers may wrap after "_" and "/": <wbr>)
    assert "demo/bt" in page and "demo/fixed" in page and "<th>eval_<wbr>rewards/<wbr>accuracies</th>" in page


def test_collect_finds_each_kind(run_dir):
    c = collect_runs([run_dir])
    assert sorted(c.metrics) == ["demo/bt", "demo/fixed"]
    assert sorted(c.evals) == ["demo/bt/model/eval/test", "demo/fixed/model/eval/test"]
    assert list(c.bon) == ["demo/bon", "demo/bon_seed1"] and len(c.alerts) == 2 and list(c.summaries) == ["demo"]
    assert list(c.figures) == ["demo/reliability"]


def test_empty_folder_says_what_is_missing(tmp_path):
    page = write_report([tmp_path], tmp_path / "report.html").read_text()
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in page
    assert "No metrics.jsonl" in page and "No bon_results.json" in page and "No alerts.jsonl" in page
    assert _images(page) == []


def test_cli_report(run_dir, tmp_path, capsys):
    out = tmp_path / "cli.html"
    assert main(["report", str(run_dir), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out and len(_images(out.read_text())) == 14


@pytest.mark.slow
def test_report_of_a_real_training_run(tmp_path):
    """A real (tiny) train-rm run plus its eval-rm report, as a user produces them."""
    from marginkit.data.world import WorldConfig, make_world
    from marginkit.models.tiny import build_word_tokenizer, make_tiny_model_dir

    world = make_world(WorldConfig(seed=1, n_train=64, n_val=16, n_test=32))
    base = make_tiny_model_dir(tmp_path / "base", build_word_tokenizer(world.vocabulary()), hidden_size=16,
                               num_layers=1, num_heads=2)
    world.save(tmp_path / "world")
    run = tmp_path / "run"
    assert main(["train-rm", f"model.name_or_path={base}", f"data.train={tmp_path / 'world' / 'train.jsonl'}",
                 f"data.eval={tmp_path / 'world' / 'val.jsonl'}", f"train.output_dir={run}", "train.batch_size=16",
                 "train.log_every=1", "train.progress_bar=false"]) == 0
    assert main(["eval-rm", "--model", str(run / "model"), "--data", str(tmp_path / "world" / "test.jsonl")]) == 0
    page = write_report([run], tmp_path / "report.html").read_text()
    assert "run/model/eval/test" in page and "Accuracy by bucket of |true gap|" in page
    assert len(_images(page)) >= 3 + 1 + 3  # curves, histogram, 3 bucket kinds (+ eval-rm's saved PNGs)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_screenshot_script_renders_the_page(run_dir, tmp_path):
    html = write_report([run_dir], tmp_path / "report.html")
    script = Path(__file__).resolve().parents[1] / "scripts" / "screenshot_report.sh"
    subprocess.run(["bash", str(script), str(html), str(tmp_path / "shot.png"), "1200", "6000"], check=True,
                   capture_output=True, timeout=120)
    png = (tmp_path / "shot.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width == 1200 and 1000 < height <= 6000  # trimmed to the page, which is longer than one screen
