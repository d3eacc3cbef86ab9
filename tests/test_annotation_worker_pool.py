"""The annotation tools' one worker pool (``detr_d2.annotation.worker_pool.run_in_workers``):
results in task order, the state handed to every worker, generators of tasks, errors propagated."""

import os

import pytest

from detr_d2.annotation.worker_pool import run_in_workers, worker_state


def _scaled(t):
    return t * worker_state()["scale"], os.getpid()


def _fails_on_three(t):
    if t == 3:
        raise ValueError("task 3 failed")
    return t


@pytest.mark.parametrize("workers,chunksize", [(1, None), (2, None), (2, 1), (2, 3)])
def test_results_in_task_order_with_the_state(workers, chunksize):
    out = run_in_workers(_scaled, list(range(23)), {"scale": 7}, workers, "t", chunksize=chunksize)
    assert [v for v, _ in out] == [7 * t for t in range(23)]
    pids = {pid for _, pid in out}
    assert (pids == {os.getpid()}) if workers == 1 else (os.getpid() not in pids)


def test_generator_tasks_are_consumed_in_this_process():
    made = []

    def tasks():
        for t in range(9):
            made.append(os.getpid())
            yield t

    out = run_in_workers(_scaled, tasks(), {"scale": 2}, 2, "t", total=9, chunksize=1)
    assert [v for v, _ in out] == [2 * t for t in range(9)] and set(made) == {os.getpid()}


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_task_raises(workers):
    with pytest.raises(ValueError, match="task 3 failed"):
        run_in_workers(_fails_on_three, list(range(6)), {}, workers, "t")
