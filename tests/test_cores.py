"""Workers of an xdist run share the cores: torch gets each worker's share during a check."""

import os

import pytest
import torch

from pytest_invarlock.cores import cores, threads, worker_share


def test_a_worker_gets_its_share_of_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    assert worker_share({"workercount": 2}) == max(1, cores() // 2)
    assert worker_share({"workercount": 4 * cores()}) == 1  # never none


@pytest.mark.parametrize("workerinput", [None, {"workercount": 1}, {}])
def test_one_process_is_left_alone(monkeypatch, workerinput):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    assert worker_share(workerinput) is None


@pytest.mark.parametrize("variable", ["OMP_NUM_THREADS", "MKL_NUM_THREADS"])
def test_a_user_who_set_the_thread_count_is_left_alone(monkeypatch, variable):
    for other in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(variable, "8")
    assert worker_share({"workercount": 2}) is None


@pytest.mark.parametrize("cpu_max, expected", [("200000 100000", 2), ("50000 100000", 1),
                                               ("max 100000", None), ("garbage", None)])
def test_a_containers_cpu_quota_bounds_the_cores(monkeypatch, tmp_path, cpu_max, expected):
    from pytest_invarlock import cores as module

    quota = tmp_path / "cpu.max"
    quota.write_text(cpu_max + "\n")
    monkeypatch.setattr(module, "CPU_MAX", quota)
    assert module._quota() == expected
    assert cores() == (min(expected, len(os.sched_getaffinity(0)))
                       if expected else len(os.sched_getaffinity(0)))


def test_threads_limits_torch_and_gives_its_setting_back():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="boom"), threads(1):
            raise RuntimeError("boom")
        assert torch.get_num_threads() == 2
        for limit in (None, 2, 3):  # no limit, or one above the setting: nothing changes
            with threads(limit):
                assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
