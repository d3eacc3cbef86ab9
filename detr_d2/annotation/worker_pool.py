"""One worker pool for the annotation tools: run a function over tasks in order, in this process
or in ``workers`` processes, with a tqdm progress bar.

The per-run state (categories, options) is handed to each worker process once, by the pool
initializer, instead of being pickled with every task; task functions read it with
:func:`worker_state`. Tasks may come from a generator that does work in this process (the model of
``add_stuff_from_model``): at most ``2 * workers`` chunks are in flight, so the generator runs
ahead of the workers by a bounded amount. Results come back in task order.
"""

import os
from itertools import islice
from multiprocessing import get_context
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, TypeVar

from tqdm import tqdm

__all__ = ["run_in_workers", "worker_state"]

T = TypeVar("T")
R = TypeVar("R")

_STATE: Dict[str, Any] = {}


def worker_state() -> Dict[str, Any]:
    """The state given to :func:`run_in_workers`, in the process running a task."""
    return _STATE


def _init_worker(state: Dict[str, Any]) -> None:
    _STATE.clear()
    _STATE.update(state)


def _run_chunk(fn: Callable[[T], R], chunk: List[T]) -> List[R]:
    return [fn(t) for t in chunk]


def _chunks(tasks: Iterable[T], size: int) -> Iterator[List[T]]:
    it = iter(tasks)
    while chunk := list(islice(it, size)):
        yield chunk


def run_in_workers(
    fn: Callable[[T], R],
    tasks: Iterable[T],
    state: Dict[str, Any],
    workers: int,
    desc: str,
    total: Optional[int] = None,
    chunksize: Optional[int] = None,
) -> List[R]:
    """``[fn(t) for t in tasks]``, in order: in this process when ``workers <= 1`` or there are
    fewer than 2 tasks, else in ``workers`` processes (fork where available) handed ``chunksize``
    tasks at a time (default: up to 64, about 8 chunks per worker).

    ``fn`` must be a module-level function (it is pickled by name); it reads ``state`` through
    :func:`worker_state`. ``total``: the number of tasks when ``tasks`` has no ``len`` (a
    generator). The progress bar is closed before an error propagates, so a tool's ``error:`` line
    gets a line of its own.
    """
    total = len(tasks) if total is None else total  # type: ignore[arg-type]
    bar = tqdm(total=total, desc=desc, unit="img")
    try:
        if workers <= 1 or total < 2:
            _init_worker(state)
            out = []
            for t in tasks:
                out.append(fn(t))
                bar.update()
            return out
        ctx = get_context("fork" if hasattr(os, "fork") else "spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(state,)) as pool:
            pending, out = [], []

            def collect() -> None:
                done = pending.pop(0).get()
                out.extend(done)
                bar.update(len(done))

            if chunksize is None:
                chunksize = min(64, total // (8 * workers))
            for chunk in _chunks(tasks, max(1, chunksize)):
                pending.append(pool.apply_async(_run_chunk, (fn, chunk)))
                while len(pending) > 2 * workers or (pending and pending[0].ready()):
                    collect()
            while pending:
                collect()
            return out
    finally:
        bar.close()
