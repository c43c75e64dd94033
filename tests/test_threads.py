"""marginkit.threads: the torch thread count of the demo, the studies and the world pipeline (issue 14)."""

from __future__ import annotations

import os

import pytest
import torch

from marginkit.demo import DemoConfig
from marginkit.study.margins import StudyConfig
from marginkit.study.real import RealStudyConfig
from marginkit.study.world_pipeline import WorldPipelineConfig
from marginkit.threads import choose_threads, free_cores, torch_threads


def machine(monkeypatch: pytest.MonkeyPatch, cores: int, load: float) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0))


def test_free_cores_are_usable_cores_minus_the_load(monkeypatch):
    machine(monkeypatch, cores=8, load=2.6)  # 8 - round(2.6) = 5
    assert free_cores()[0] == 5
    machine(monkeypatch, cores=2, load=3.0)  # busier than it has cores: still 1
    assert free_cores()[0] == 1
    machine(monkeypatch, cores=4, load=0.0)
    assert free_cores() == (4, "4 usable cores, 1-minute load 0.0")


def test_choose_threads(monkeypatch):
    machine(monkeypatch, cores=8, load=2.0)  # 6 free
    assert choose_threads(3)[0] == 3  # as given, whatever the load
    assert choose_threads(0)[0] == 6
    assert choose_threads(0, jobs=4) == (1, "threads=0: 6 free (8 usable cores, 1-minute load 2.0), shared by 4 jobs")
    assert choose_threads(0, jobs=10)[0] == 1  # at least one each
    assert choose_threads(-1)[0] == torch.get_num_threads()
    with pytest.raises(ValueError, match="threads=-2"):
        choose_threads(-2)


def test_torch_threads_says_and_restores():
    before, said = torch.get_num_threads(), []
    with torch_threads(1, said.append) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    assert said == ["torch threads: 1 per process (threads=1)"]


@pytest.mark.parametrize("cls", [DemoConfig, StudyConfig, WorldPipelineConfig, RealStudyConfig])
def test_configs_default_to_one_thread_and_reject_bad_values(cls):
    assert cls().threads == 1  # 1 thread: 47 s vs 407 s beside another job (issue 14), same digits everywhere
    with pytest.raises(ValueError, match="threads=-2"):
        cls(threads=-2)


def _square_plus(x: int, y: int) -> int:
    return x * x + y


def test_run_units_gives_each_unit_its_result_in_process_and_in_workers() -> None:
    from marginkit.threads import run_units

    units = [(1, 0), (2, 1), (3, 2)]
    said: list[str] = []
    serial = dict(run_units(_square_plus, units, jobs=1, threads=1, say=said.append))
    assert serial == {(1, 0): 1, (2, 1): 5, (3, 2): 11}
    assert said == ["torch threads: 1 per process (threads=1)"]
    said.clear()
    parallel = dict(run_units(_square_plus, units, jobs=2, threads=1, say=said.append))
    assert parallel == serial
    assert said == ["torch threads: 1 in each of 2 processes (threads=1)"]
