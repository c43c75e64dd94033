"""Every module imports (catches undefined names at import), and docs/metrics.md names exactly what is logged."""

import importlib
import pkgutil
import re
from pathlib import Path

import marginkit

ROOT = Path(__file__).resolve().parents[1]


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(marginkit.__path__, "marginkit.")]
    assert len(names) > 30
    for name in names:
        importlib.import_module(name)


def test_every_package_declares_all():
    for init in (ROOT / "src" / "marginkit").rglob("__init__.py"):
        assert "__all__" in init.read_text(), init


def documented_metrics() -> set[str]:
    table = (ROOT / "docs" / "metrics.md").read_text()
    return set(re.findall(r"^\| `([^`]+)` \|", table, flags=re.M))


def test_metrics_doc_matches_logged_names(tmp_path, tiny_model_dir):
    import json

    from marginkit.config import RMRunConfig
    from marginkit.configlib import from_dict
    from marginkit.data.schema import Pair
    from marginkit.train.rm import train_reward_model

    pairs = [Pair(f"please help {w}", "yes great", "no bad", score_chosen=5, score_rejected=1,
                  gold_chosen=1.0, gold_rejected=float(i % 3) - 1.0, id=str(i))
             for i, w in enumerate(["me", "a", "the", "cats", "dogs", "fish", "food", "water"])]
    cfg = from_dict(RMRunConfig, {"model": {"name_or_path": str(tiny_model_dir)}, "margin": {"name": "label"},
                                  "train": {"output_dir": str(tmp_path), "batch_size": 4, "log_every": 1,
                                            "progress_bar": False}})
    train_reward_model(cfg, pairs, pairs[:4], console=lambda s: None)
    logged = set()
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        logged |= set(json.loads(line)) - {"step", "epoch"}
    assert logged == documented_metrics()
