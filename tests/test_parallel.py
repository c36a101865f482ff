"""rlnotes.parallel: the pool every parallel run of rlnotes uses: results in order, the jobs not
started cancelled when one fails, the initializer run once per worker, and workers=1 in this
process on one thread, the thread count restored after."""

import functools
import os
import time
from pathlib import Path

import pytest
import torch

from rlnotes import parallel


# jobs that the spawned workers import by name (this file is on their sys.path, as on pytest's)
def square_after(x):
    time.sleep(0.05 * (x % 3))          # later jobs may finish first: the order must not follow
    return x * x, torch.get_num_threads()


def fail_or_mark(folder, x):
    if x == 0:
        raise ValueError("job 0 fails")
    time.sleep(0.2)
    (Path(folder) / str(x)).touch()
    return x


def start(folder):
    with open(Path(folder) / "starts", "a") as f:
        f.write(f"{os.getpid()}\n")
    return os.getpid()


def job_with_state(state, x):
    return state, x, torch.get_num_threads()


def hidden_shape(model):
    out = model(input_ids=torch.tensor([[1, 2, 3]]), output_hidden_states=True)
    return tuple(out.hidden_states[-1].shape)


def test_a_model_in_a_job_arrives_whole_after_its_first_forward_pass(model):
    """A transformers model that has run once carries hooks that plain pickle sends broken (its
    hidden states come back None in the worker): jobs go as the initializer's state does."""
    model(input_ids=torch.tensor([[1, 2]]), output_hidden_states=True)
    with parallel.Pool(2) as pool:
        assert pool.map(hidden_shape, [model, model]) == [hidden_shape(model)] * 2


def test_cores_counts_this_process_cpus():
    assert 1 <= parallel.cores() <= (os.cpu_count() or 1)


@pytest.mark.parametrize("workers", [1, 2])
def test_results_come_in_the_order_given_each_on_one_thread(workers):
    with parallel.Pool(workers) as pool:
        assert pool.map(square_after, range(7)) == [(x * x, 1) for x in range(7)]
        assert pool.map(square_after, [5, 1]) == [(25, 1), (1, 1)]     # a pool serves several maps


def test_a_failed_job_cancels_the_jobs_not_started(tmp_path):
    with parallel.Pool(2) as pool:
        with pytest.raises(ValueError, match="job 0 fails"):
            pool.map(functools.partial(fail_or_mark, str(tmp_path)), range(30))
    assert len(list(tmp_path.iterdir())) < 10         # at most the few jobs already queued ran


def test_in_this_process_a_failed_job_stops_the_rest_and_the_threads_are_restored(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with parallel.Pool(1) as pool, pytest.raises(ValueError, match="job 0 fails"):
            pool.map(functools.partial(fail_or_mark, str(tmp_path)), [1, 0, 2])
        assert sorted(p.name for p in tmp_path.iterdir()) == ["1"] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_ctrl_c_cancels_the_jobs_not_started(tmp_path, monkeypatch):
    calls = []

    def ctrl_c_on_wait(self, timeout=None):        # Ctrl-C while the pool waits for the first result
        calls.append(self)
        raise KeyboardInterrupt

    with parallel.Pool(2) as pool:
        monkeypatch.setattr("concurrent.futures.Future.result", ctrl_c_on_wait)
        with pytest.raises(KeyboardInterrupt):
            pool.map(functools.partial(fail_or_mark, str(tmp_path)), range(1, 31))
        monkeypatch.undo()
    assert len(calls) == 1 and len(list(tmp_path.iterdir())) < 10


@pytest.mark.parametrize("workers", [1, 2])
def test_the_initializer_runs_once_per_worker_and_its_state_reaches_every_job(tmp_path, workers):
    threads = torch.get_num_threads()
    with parallel.Pool(workers, initializer=start, initargs=(str(tmp_path),)) as pool:
        out = pool.map(job_with_state, range(8)) + pool.map(job_with_state, range(8, 12))
    starts = (tmp_path / "starts").read_text().split()
    assert [x for _, x, _ in out] == list(range(12)) and all(n == 1 for *_, n in out)
    assert len(starts) == len(set(starts)) <= workers             # once per process
    assert {state for state, *_ in out} <= {int(pid) for pid in starts}
    if workers == 1:
        assert starts == [str(os.getpid())] and torch.get_num_threads() == threads


def test_a_closed_pool_refuses_jobs_and_workers_are_checked():
    pool = parallel.Pool(1)
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.map(square_after, [1])
    with pytest.raises(ValueError, match="workers must be >= 1"):
        parallel.Pool(0)


def test_pool_names_fn_jobs_initializer_and_initargs():
    with pytest.raises(TypeError, match="jobs must be an iterable of jobs .* got NoneType"):
        parallel.Pool(1).map(square_after, None)
    with pytest.raises(TypeError, match="fn must be callable, got NoneType"):
        parallel.Pool(1).map(None, [1])
    with pytest.raises(TypeError, match=r"initializer must be callable \(or None\), got int"):
        parallel.Pool(1, initializer=1)
    with pytest.raises(TypeError, match="initargs must be a tuple of the initializer's arguments, got int"):
        parallel.Pool(1, initializer=dict, initargs=5)
    with parallel.Pool(2) as pool:
        with pytest.raises(TypeError, match="fn must be importable by name to reach a worker process"):
            pool.map(lambda x: x, [1])


def test_pool_for_reuses_a_started_pool_and_makes_one_otherwise():
    with parallel.Pool(1) as pool:
        with parallel.pool_for(pool, 5) as p:
            assert p is pool
        assert pool.map(square_after, [2]) == [(4, 1)]      # still open
    with parallel.pool_for(1, 3) as p:
        assert p.workers == 1
    assert p._closed
    with pytest.raises(ValueError, match="workers must be a Pool without an initializer"):
        with parallel.pool_for(parallel.Pool(1, initializer=dict), 2):
            pass
    with pytest.raises(ValueError, match="workers must be"):
        with parallel.pool_for(0, 2):
            pass
