"""Workers of an xdist run share the cores: torch gets each worker's share during a check."""

import pytest
import torch

from pytest_invarlock.cores import cores, threads, worker_share


def test_a_worker_gets_its_share_of_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert worker_share({"workercount": 2}) == max(1, cores() // 2)
    assert worker_share({"workercount": 4 * cores()}) == 1  # never none


@pytest.mark.parametrize("workerinput", [None, {"workercount": 1}, {}])
def test_one_process_is_left_alone(monkeypatch, workerinput):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert worker_share(workerinput) is None


def test_a_user_who_set_omp_num_threads_is_left_alone(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    assert worker_share({"workercount": 2}) is None


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
