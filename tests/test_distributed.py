"""Two gloo ranks on 127.0.0.1: the optimizer averages each gradient group across ranks and the mask's accuracy
counts are all-reduced, so two ranks on half batches take the same steps as one process on the whole batch.

The stream GSNR estimator sees the all-reduced gradients, so its coefficients equal the single process's. The split
estimator averages the ranks' estimates: every rank gets the same coefficients, but not the single process's."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import deepkd

RECIPE = deepkd.compose(
    loss="dkd", momentum=deepkd.GSNR(interval=2, estimator="stream"), mask=deepkd.DynamicMask(horizon=2)
)


def _data(steps: int):
    gen = torch.Generator().manual_seed(0)
    return [
        (
            torch.randn(8, 6, generator=gen),
            torch.randn(8, 5, generator=gen) * 3,
            torch.randint(0, 5, (8,), generator=gen),
        )
        for _ in range(steps)
    ]


def _train(rank: int, world: int, steps: int):
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 5)
    opt = deepkd.DistillOptimizer(model.parameters(), RECIPE, lr=0.1, weight_decay=1e-3)
    outs = []
    for x, t, y in _data(steps):
        part = slice(rank * 8 // world, (rank + 1) * 8 // world)
        outs.append(opt.distill_step(model(x[part]), t[part], y[part], epoch=1))
    return [p.detach().clone() for p in model.parameters()], opt, outs


def _worker(rank: int, world: int, port: int, queue) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        params, opt, outs = _train(rank, world, steps=6)
        # plain lists: tensors would travel as shared-memory handles that die with this process
        plain = [p.tolist() for p in params]
        queue.put((rank, plain, opt.coefficients(), float(opt.mask_state.accuracy), [o.k for o in outs]))
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_one_process_on_the_whole_batch():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    params, opt, outs = _train(0, 1, steps=6)
    assert [r[0] for r in results] == [0, 1]
    for _, rank_params, coeffs, accuracy, ks in results:
        for a, b in zip(rank_params, params):
            torch.testing.assert_close(
                torch.tensor(a), b, atol=1e-6, rtol=1e-5
            )  # the averaged gradients are the batch's
        assert coeffs == pytest.approx(opt.coefficients())  # the same GSNR, hence the same momenta
        assert accuracy == pytest.approx(float(opt.mask_state.accuracy))  # the accuracy counts are all-reduced
        assert ks == [o.k for o in outs]
