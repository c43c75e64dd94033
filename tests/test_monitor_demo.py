"""The gold-world monitor demo: batch 1 at lr 1e-2 trips the explosion check; batch 32 at 3e-4 stays quiet."""

import pytest


@pytest.mark.slow
def test_monitor_fires_on_reckless_dpo_and_not_on_sane(tmp_path):
    import torch

    from marginkit.study.world_pipeline import monitor_demo

    threads = torch.get_num_threads()
    alerts = monitor_demo(tmp_path, seed=0, n_pairs=150, console=lambda s: None)
    assert torch.get_num_threads() == threads  # restored
    assert "explosion" in {a["check"] for a in alerts["reckless"]}
    assert alerts["sane"] == []
    reckless = alerts["reckless"][0]
    assert reckless["severity"] == "warn" and reckless["values"]  # the numbers behind the alert are kept
