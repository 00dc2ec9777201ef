"""Running the jobs: one after the other in this process, or in spawned worker processes.

Each worker is a fresh (spawned) process with its own torch threads; a data set's tensors, teacher weights and
teacher logits travel once per worker as NumPy arrays (pickled through the pipe, no shared memory needed). A run's
result depends only on its job and the thread count, not on which worker runs it or when (each run seeds the
student's weights and the data order itself), so results come back in job order whatever the order of completion.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import TensorDataset

import deepkd
from benchmarks.accuracy.profiles import LR, model
from benchmarks.accuracy.runs import guarded


class Job(NamedTuple):
    """One run to do: a method's recipe on a data set, one seed, ``epochs`` epochs under ``schedule`` from learning
    rate ``lr``, on ``device``; ``evaluate`` is ``"epoch"`` (test and validation top-1 after every epoch) or
    ``"final"``."""

    dataset: str
    method: str
    recipe: deepkd.Recipe
    seed: int
    epochs: int
    schedule: Any
    lr: float = LR
    evaluate: str = "epoch"
    device: str = "cpu"


# a job as a plain tuple (a Job is one): (dataset, method, recipe, seed, epochs, schedule, lr, evaluate, device)
JobTuple = tuple[str, str, deepkd.Recipe, int, int, Any, float, str, str]

# a data set's context: {"data": (train, test, classes), "val": TensorDataset or None, "teacher": the teacher
# module, "logits": its logits for every training sample}
Context = Mapping[str, Any]

_WORKER: dict[str, Any] = {}  # in a worker: the packed contexts, and those unpacked so far


def _run(job: JobTuple, c: Context) -> dict[str, Any]:
    d, method, recipe, seed, epochs, schedule, lr, evaluate, device = Job(*job)  # a short tuple takes the defaults
    return guarded(
        d, method, recipe, seed, c["teacher"], c["data"], epochs, c["logits"], c["val"], schedule, lr, evaluate, device
    )


def _pack(dataset: str, c: Context) -> dict[str, Any]:
    """A context as NumPy arrays, to send to the workers."""
    train, test, classes = c["data"]

    def arrays(ds: TensorDataset | None) -> Any:
        return None if ds is None else tuple(t.numpy() for t in ds.tensors)

    return {
        "dataset": dataset,
        "train": arrays(train),
        "test": arrays(test),
        "val": arrays(c["val"]),
        "classes": classes,
        "teacher": {k: v.detach().numpy() for k, v in c["teacher"].state_dict().items()},
        "logits": c["logits"].numpy(),
    }


def _unpack(p: Mapping[str, Any]) -> dict[str, Any]:
    """The context :func:`_pack` packed, rebuilt in a worker."""

    def ds(arrays: Any) -> TensorDataset | None:
        return None if arrays is None else TensorDataset(*(torch.from_numpy(np.array(a)) for a in arrays))

    train, test = ds(p["train"]), ds(p["test"])
    assert train is not None and test is not None
    teacher = model(p["dataset"], "teacher", p["classes"], train.tensors[0][:1])
    teacher.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in p["teacher"].items()})
    return {
        "data": (train, test, p["classes"]),
        "val": ds(p["val"]),
        "teacher": teacher.eval(),
        "logits": torch.from_numpy(np.array(p["logits"])),
    }


def _worker_init(threads: int, payloads: dict[str, Any]) -> None:
    torch.set_num_threads(threads)
    _WORKER.update(payloads=payloads, ready={})


def _worker_run(job: JobTuple) -> dict[str, Any]:
    ready = _WORKER["ready"]
    dataset = job[0]
    if dataset not in ready:
        ready[dataset] = _unpack(_WORKER["payloads"][dataset])
    return _run(job, ready[dataset])


class Progress:
    """Logs each finished run: its figures, the time elapsed and an estimate of the time left."""

    def __init__(self, total: int, log: Callable[[str], None]) -> None:
        self.total, self.log, self.start = total, log, time.perf_counter()

    def __call__(self, res: Mapping[str, Any], done: int) -> None:
        elapsed = time.perf_counter() - self.start
        eta = elapsed / done * (self.total - done)
        what = (
            f"FAILED {res['error']}"
            if "error" in res
            else f"best {res['best_top1']:.4f} final {res['final_top1']:.4f}"
            + (f" val {res['final_val_top1']:.4f}" if "final_val_top1" in res else "")
            + f" (lr {res.get('lr')}, {res['seconds']:.1f} s)"
        )
        self.log(
            f"[accuracy] {done}/{self.total} {res['dataset']} {res['method']} seed {res['seed']}: {what}; "
            f"{elapsed / 60:.1f} min elapsed, ~{eta / 60:.1f} min left"
        )


def _cost(job: JobTuple, contexts: Mapping[str, Context]) -> float:
    """A run's relative cost: training inputs × epochs × (1 + gradient groups)."""
    dataset, recipe, epochs = job[0], job[2], job[4]
    x = contexts[dataset]["data"][0].tensors[0]
    return float(x.numel() * epochs * (1 + len(recipe.plan().groups)))


def _in_workers(
    jobs: Sequence[JobTuple], contexts: Mapping[str, Context], workers: int, threads: int, progress: Progress
) -> list[dict[str, Any]]:
    """The jobs in ``workers`` spawned processes of ``threads`` torch threads, the longest first (so that no long run
    is left alone at the end); results in job order."""
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    payloads = {name: _pack(name, c) for name, c in contexts.items()}
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init,
        initargs=(threads, payloads),
    )
    order = sorted(range(len(jobs)), key=lambda i: _cost(jobs[i], contexts), reverse=True)
    try:
        futures = {pool.submit(_worker_run, jobs[i]): i for i in order}
        for done, future in enumerate(as_completed(futures), 1):
            result = results[futures[future]] = future.result()
            progress(result, done)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)  # a failed run ends the benchmark without the queued ones
        raise
    pool.shutdown()
    return [r for r in results if r is not None]


def execute(
    jobs: Sequence[JobTuple],
    contexts: Mapping[str, Context],
    workers: int,
    threads: int,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Run every job (a :class:`Job` or a plain tuple of its fields);
    results in job order.

    ``workers <= 1``: one after the other in this process. Otherwise in ``workers`` spawned processes of
    ``threads`` torch threads each. A run's result depends only on its job and the thread count, not on which
    worker runs it or when (each run seeds the student's weights and the data order itself)."""
    progress = Progress(len(jobs), log)
    if workers > 1:
        return _in_workers(jobs, contexts, workers, threads, progress)
    results = []
    for done, job in enumerate(jobs, 1):
        results.append(_run(job, contexts[job[0]]))
        progress(results[-1], done)
    return results
