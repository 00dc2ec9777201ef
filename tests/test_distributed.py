"""Two gloo ranks on 127.0.0.1 take the same steps as one process on the whole batch, on both sync paths.

``sync="step"`` (default): each rank keeps local buffers fed by its local gradients and one all-reduce of the summed
step direction moves the parameters; ``sync="grads"``: every gradient group is all-reduced. Before it, one small
all-reduce carries the loss parts, the mask's accuracy counts and the stream GSNR estimator's sampled coordinates,
so the coefficients and K are the single process's. The official-code update is not linear and falls back to
``"grads"``. A checkpoint written on two ranks holds the global buffers and resumes on one process exactly.

Every case runs in one launch of two processes (spawning is slow).
"""

from __future__ import annotations

import io
import socket
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import deepkd

RECIPES = {
    "kd": lambda: deepkd.compose(loss="kd", momentum="sgd", mask="none"),
    "dot": lambda: deepkd.compose(loss="kd", momentum="dot", mask="none"),
    "deepkd": lambda: deepkd.compose(
        loss="dkd", momentum=deepkd.GSNR(interval=2, estimator="stream"), mask=deepkd.DynamicMask(horizon=2)
    ),
    "official": lambda: deepkd.compose(loss="kd", momentum=deepkd.FixedOffsets(reference_quirks=True), mask="none"),
}
CASES = [(name, sync) for name in RECIPES for sync in ("step", "grads")]
STEPS, RESUME_AT, BATCH = 6, 3, 8


def _model() -> torch.nn.Module:  # no BatchNorm: its batch statistics are per rank
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 5))


def _optimizer(model: torch.nn.Module, name: str, sync: str) -> deepkd.DistillOptimizer:
    params = list(model.parameters())
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": 0.05, "weight_decay": 2e-3, "nesterov": True}]
    return deepkd.DistillOptimizer(groups, RECIPES[name](), lr=0.1, weight_decay=1e-3, sync=sync)  # type: ignore[arg-type]


def _data(steps: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [
        (
            torch.randn(BATCH, 6, generator=gen),
            torch.randn(BATCH, 5, generator=gen) * 3,
            torch.randint(0, 5, (BATCH,), generator=gen),
        )
        for _ in range(steps)
    ]


def _run(model: torch.nn.Module, opt: deepkd.DistillOptimizer, batches: list[Any], rank: int, world: int) -> list:
    part = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    return [opt.distill_step(model(x[part]), t[part], y[part], epoch=1) for x, t, y in batches]


def _buffers(opt: deepkd.DistillOptimizer) -> list[torch.Tensor]:
    return [b for s in opt.momentum_states for bufs in s.buffers for b in bufs]


def _plain(tensors: Any) -> list:  # tensors would travel as shared-memory handles that die with their process
    return [t.detach().tolist() for t in tensors]


def _worker(rank: int, world: int, port: int, queue: Any) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        sent: list[int] = []
        all_reduce = dist.all_reduce

        def counting(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            sent.append(tensor.numel())
            return all_reduce(tensor, *args, **kwargs)

        dist.all_reduce = counting  # type: ignore[assignment]
        results: dict[Any, Any] = {}
        for name, sync in CASES:
            model = _model()
            opt = _optimizer(model, name, sync)
            sent.clear()
            outs = _run(model, opt, _data(STEPS), rank, world)
            results[name, sync] = (
                _plain(model.parameters()),
                opt.coefficients(),
                opt.sync_path,
                [o.k for o in outs],
                float(opt.mask_state.accuracy),
                list(sent),
            )
        # a non-finite loss on one rank only: every rank sees it (the parts are averaged) and skips the step
        model = _model()
        opt = deepkd.DistillOptimizer(model.parameters(), RECIPES["kd"](), lr=0.1, nonfinite="skip")
        batches = _data(3)
        if rank == 1:
            x, t, y = batches[1]
            batches[1] = (x, torch.full_like(t, float("nan")), y)
        outs = _run(model, opt, batches, rank, world)
        results["skip"] = ([o.skipped for o in outs], _plain(model.parameters()), opt.skipped_steps)
        # a checkpoint after RESUME_AT steps on two ranks: every rank calls state_dict (it averages the buffers)
        model = _model()
        opt = _optimizer(model, "deepkd", "step")
        _run(model, opt, _data(RESUME_AT), rank, world)
        local = _plain(_buffers(opt))
        blob = io.BytesIO()
        state = opt.state_dict()
        torch.save({"model": model.state_dict(), "optimizer": state}, blob)
        saved = [b for s in state["deepkd"]["momentum"] for bufs in s["buffers"] for b in bufs]
        assert _plain(_buffers(opt)) == _plain(saved)  # every rank goes on from the mean, as a resumed run does
        queue.put((rank, results, blob.getvalue(), local))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks() -> list[Any]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted((queue.get(timeout=180) for _ in procs), key=lambda r: r[0])
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert [r[0] for r in results] == [0, 1]
    return results


@pytest.mark.parametrize(("name", "sync"), CASES)
def test_two_ranks_match_one_process_on_the_whole_batch(two_ranks: list[Any], name: str, sync: str) -> None:
    model = _model()
    opt = _optimizer(model, name, sync)
    outs = _run(model, opt, _data(STEPS), 0, 1)
    assert opt.sync_path is None  # a single process reduces nothing
    expected_path = "grads" if name == "official" else sync  # the official-code update is not linear
    numel = sum(p.numel() for p in model.parameters())
    products = len(opt.plan.groups)
    for _, results, _, _ in two_ranks:
        params, coeffs, path, ks, accuracy, sent = results[name, sync]
        assert path == expected_path
        for a, b in zip(params, model.parameters()):
            torch.testing.assert_close(torch.tensor(a), b, atol=1e-6, rtol=1e-5)
        assert coeffs == pytest.approx(opt.coefficients(), abs=1e-6)  # the same GSNR, hence the same momenta
        assert ks == [o.k for o in outs] and accuracy == pytest.approx(float(opt.mask_state.accuracy))
        big = [n for n in sent if n >= numel]  # the parameter-sized collectives; the rest are a few floats
        assert big == [numel if path == "step" else products * numel] * STEPS
        assert len(sent) == 2 * STEPS  # and one small one a step: loss parts, mask counts, GSNR samples together
    if name == "deepkd":
        assert len(set(opt.coefficients())) > 1  # GSNR re-allocated during the run
    # both ranks hold identical parameters
    assert two_ranks[0][1][name, sync][0] == two_ranks[1][1][name, sync][0]


def test_a_non_finite_loss_on_one_rank_makes_every_rank_skip_the_step(two_ranks: list[Any]) -> None:
    (skipped0, params0, steps0), (skipped1, params1, steps1) = (r[1]["skip"] for r in two_ranks)
    assert skipped0 == skipped1 == [False, True, False] and steps0 == steps1 == 1
    assert params0 == params1  # no rank stepped alone, no rank waited on a collective the other skipped


def test_a_two_rank_checkpoint_holds_the_global_buffers_and_resumes_on_one_process(two_ranks: list[Any]) -> None:
    batches = _data(STEPS)
    model = _model()
    opt = _optimizer(model, "deepkd", "step")
    _run(model, opt, batches[:RESUME_AT], 0, 1)
    single = [b.clone() for b in _buffers(opt)]
    _run(model, opt, batches[RESUME_AT:], 0, 1)  # the uninterrupted single process
    local = [[torch.tensor(b) for b in buffers] for _, _, _, buffers in two_ranks]
    assert any(not torch.equal(a, b) for a, b in zip(*local))  # each rank's own buffers differ ...
    for _, _, blob, _ in two_ranks:  # ... their mean, which every rank saves, is the single process's
        ckpt = torch.load(io.BytesIO(blob), weights_only=True)
        resumed = _model()
        resumed.load_state_dict(ckpt["model"])
        opt2 = _optimizer(resumed, "deepkd", "step")
        opt2.load_state_dict(ckpt["optimizer"])
        for got, want, a, b in zip(_buffers(opt2), single, *local):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(got, (a + b) / 2, atol=0, rtol=0)
        _run(resumed, opt2, batches[RESUME_AT:], 0, 1)
        for a, b in zip(resumed.parameters(), model.parameters()):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
        assert opt2.coefficients() == pytest.approx(opt.coefficients(), abs=1e-6)
