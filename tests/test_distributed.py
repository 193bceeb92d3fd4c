"""DDP and FSDP2 with real torch.distributed (gloo, 2 CPU processes).

Under DDP every rank holds the whole parameter and the averaged gradient, so each optimizer
must give exactly the single-process result on the full batch (SPEC section 4). Under FSDP2
(``fully_shard``) each rank holds a block of rows (a ``DTensor`` shard) of every parameter,
gradient and state tensor: element-wise optimizers need nothing more; transforms with
whole-matrix statistics (AdaDiag's SVD bases, factored moments, cautious masks) run on
gathered tensors, their statistics whole on every rank. Either way the sharded run must
equal the single-process one.
"""

from __future__ import annotations

import copy
import datetime
import gc
import os
import sys
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import hamopt

pytestmark = [
    pytest.mark.dist,
    pytest.mark.skipif(not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed"),
]

NAMES = ["adamw", "hfac", "adafactor_m", "adadiag", "lion", "grams", "signfsgd"]
STEPS = 5


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 6, generator=g, dtype=torch.float64), torch.randn(16, 3, generator=g, dtype=torch.float64)


def _make(name: str, params) -> torch.optim.Optimizer:  # type: ignore[no-untyped-def]
    info = hamopt.get(name)
    return info.create(params, **info.test_kwargs)


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    for _ in range(STEPS):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def _join(rank: int, out: str, world: int = 2) -> None:
    torch.set_num_threads(1)
    # A file rendezvous, not a TCP port picked in advance: a port freed by _free_port() could
    # be taken by another process before rank 0 binds it, leaving rank 1 waiting for good
    # (seen once under pytest-xdist). The timeout turns any failed rendezvous into an error.
    dist.init_process_group("gloo", init_method=f"file://{out}.rendezvous", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))


def _rank_main(rank: int, worker, out: str, world: int) -> None:  # type: ignore[no-untyped-def]
    """One rank: join, ``results = worker(rank, out)``, save them to ``out.<rank>``, leave.

    Every object the worker made (DDP modules, FSDP2 meshes, optimizers) is freed before the
    process group is destroyed. A DDP ``Reducer`` holds a reference to the group and is freed
    with the GIL held; when it drops the group's last reference (``destroy_process_group``
    already ran), the group's destructor joins gloo threads that may be waiting for the GIL,
    and the rank never exits (seen in CI with torch 2.13: the whole run hung at 95%).
    """
    _join(rank, out, world)
    error = None
    try:
        results = worker(rank, out)
    except BaseException:  # reported to the parent below, after the teardown
        error = traceback.format_exc()
    gc.collect()  # the worker's frame and any cycle holding a Reducer go while the group lives
    if error is None:
        torch.save(results, f"{out}.{rank}")  # tensors only: nothing in it holds the group
    dist.destroy_process_group()
    if error is not None:
        raise RuntimeError(f"rank {rank} of {world} failed:\n{error}")


#: A spawned run that has not ended by then is killed and fails its test (the longest, the
#: HSDP test on 4 processes, takes about 10 s on 2 idle cores).
SPAWN_TIMEOUT_S = 600.0


def _spawn(worker, out: str, world: int = 2) -> list[dict]:  # type: ignore[no-untyped-def]
    """Run ``worker(rank, out)`` in ``world`` gloo processes; the results each returned.

    ``worker`` is a module-level function (it is pickled into the spawned processes). A run
    that hangs is killed after ``SPAWN_TIMEOUT_S`` and fails the test, naming the ranks that
    had not saved their results, instead of holding the test session.
    """
    ctx = mp.start_processes(_rank_main, args=(worker, out, world), nprocs=world, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            missing = [r for r in range(world) if not os.path.exists(f"{out}.{r}")]
            for proc in ctx.processes:
                if proc.is_alive():
                    proc.kill()
            pytest.fail(f"{worker.__name__} on {world} ranks did not end within {SPAWN_TIMEOUT_S:.0f} s "
                        f"(ranks without results: {missing or 'none: a hang after saving'})")
    return [torch.load(f"{out}.{r}", weights_only=True) for r in range(world)]


def _worker(rank: int, out: str) -> dict:
    x, y = _batch()
    shard = slice(rank * 8, (rank + 1) * 8)
    results = {}
    for name in NAMES:
        ddp = torch.nn.parallel.DistributedDataParallel(_model())
        _train(ddp, _make(name, ddp.parameters()), x[shard], y[shard])
        results[name] = [p.detach().clone() for p in ddp.module.parameters()]
    return results


def test_ddp_equals_single_process_full_batch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ranks = _spawn(_worker, str(tmp_path / "ddp"))
    x, y = _batch()
    for name in NAMES:
        model = _model()
        _train(model, _make(name, model.parameters()), x, y)
        for p, a, b in zip(model.parameters(), ranks[0][name], ranks[1][name]):
            assert torch.equal(a, b), f"{name}: ranks disagree"
            torch.testing.assert_close(a, p.detach(), rtol=1e-10, atol=1e-12, msg=f"{name}: DDP != single process")


# ---------------------------------------------------------------------------- FSDP2
try:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor
except ImportError:  # pragma: no cover - torch without FSDP2
    fully_shard = None  # type: ignore[assignment]

#: Trained under fully_shard. On shards as they are: element-wise optimizers and a wrapper that
#: copies tensors (Lookahead). On gathered tensors: the AdaDiag family (SVD bases of the whole
#: matrix, refreshed every 2 steps), the factored family (row and column statistics), C-AdamW
#: and AMS (per-tensor mask counts; AMS's sign buffer is switched on after two steps, so it is
#: created mid-run and must be sharded).
FSDP_NAMES = ["adamw_variant", "lion", "grams", "lookahead", "adadiag", "adadiag++",
              "hfac", "adafactor_m", "signfsgd", "lionfactor", "adafacdiag", "adafacdiag++", "cadamw", "ams"]
FSDP_KW: dict[str, dict] = {"adadiag": dict(svd_interval=2), "adadiag++": dict(svd_interval=2),
                            "adafacdiag": dict(svd_interval=2, betas=(0.9, 0.999)),
                            "adafacdiag++": dict(svd_interval=2), "ams": dict(misaligned_scale=0.5)}
#: AdaDiag fed the very same gradients as DTensor shards (no reduction-order rounding).
FED = {"one_sided": dict(svd_interval=2), "two_sided": dict(svd_interval=2, two_sided=True),
       "rotate_momentum": dict(svd_interval=3, rotate_momentum=True, weight_decay=0.1),
       "svd": dict(svd_interval=2, two_sided=True, basis_method="svd")}
#: Sharded runs resumed from a state_dict after step 4 (AdaDiag: across the refresh at step 6;
#: Adafactor-m: whole row/column statistics beside a sharded momentum).
RESUMED = {"adadiag": dict(svd_interval=3, rotate_momentum=True), "adafactor_m": {}}
FED_SHAPES = [(7, 5), (4, 9), (5, 2, 3, 3), (3,)]  # tall, wide, a conv kernel; rows split unevenly


class _Net(torch.nn.Module):
    """A conv kernel (5 x 18 as a matrix), a tall, a wide and a small linear layer; odd row
    counts, so the two ranks hold shards of different sizes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(2, 5, 3)
        self.a = torch.nn.Linear(5, 7)
        self.b = torch.nn.Linear(7, 4)
        self.h = torch.nn.Linear(4, 3)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(self.conv(x)).mean((2, 3))
        return self.h(torch.tanh(self.b(torch.tanh(self.a(y)))))


def _images() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return (torch.randn(16, 2, 5, 5, generator=g, dtype=torch.float64),
            torch.randn(16, 3, generator=g, dtype=torch.float64))


def _fsdp_kwargs(name: str) -> dict:
    return {**hamopt.get(name).test_kwargs, **FSDP_KW.get(name, {})}


def _train_net(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    for step in range(STEPS):
        if step == 2 and isinstance(opt, hamopt.AMS):  # switch on b3: a state buffer appears mid-run
            for group in opt.param_groups:
                group["betas"] = (*group["betas"][:2], 0.9)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def _fed_grads(step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(s, generator=g, dtype=torch.float64) for s in FED_SHAPES]


def _fed_run(kw: dict, mesh=None, name: str = "adadiag",  # type: ignore[no-untyped-def]
             resume_at: int | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``name`` on FED_SHAPES for 7 steps (a fresh optimizer loading a copy of the
    state_dict after step ``resume_at``); the final parameters and bases, whole."""
    def put(t: torch.Tensor) -> torch.Tensor:
        return t.clone() if mesh is None else distribute_tensor(t.clone(), mesh, [Shard(0)])

    g = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(put(torch.randn(s, generator=g, dtype=torch.float64))) for s in FED_SHAPES]
    opt = hamopt.create(name, ps, lr=0.01, **kw)
    for step in range(7):
        if step == resume_at:
            saved = copy.deepcopy(opt.state_dict())
            opt = hamopt.create(name, ps, lr=0.01, **kw)
            opt.load_state_dict(saved)
        for p, gr in zip(ps, _fed_grads(step)):
            p.grad = put(gr)
        opt.step()
    whole = [p.detach().full_tensor() if mesh is not None else p.detach() for p in ps]
    bases = [b.to_local() if isinstance(b, DTensor) else b for p in ps for k, b in sorted(opt.state[p].items())
             if k.startswith("basis_")]
    return whole, bases


def _fsdp_worker(rank: int, out: str) -> dict:
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (2,))
    x, y = _images()
    shard = slice(rank * 8, (rank + 1) * 8)
    results: dict = {}
    for name in FSDP_NAMES:
        net = _Net()
        for module in (net.conv, net.a, net.b, net.h):
            fully_shard(module, mesh=mesh)
        fully_shard(net, mesh=mesh)
        opt = hamopt.create(name, net.parameters(), **_fsdp_kwargs(name))
        _train_net(net, opt, x[shard], y[shard])
        results[name] = [p.detach().full_tensor() for p in net.parameters()]
        if name == "ams":  # the sign buffer of every parameter: created mid-run, sharded
            results["ams:sign_buffer_sharded"] = [type(opt.state[p]["sign_avg"]).__name__ == "DTensor"
                                                  for p in net.parameters()]
    for key, kw in FED.items():
        results[f"fed:{key}"] = _fed_run(kw, mesh)
    for name, kw in RESUMED.items():
        results[f"resumed:{name}"] = [_fed_run(kw, mesh, name, resume_at=r)[0] for r in (None, 4)]
    return results


@pytest.mark.skipif(fully_shard is None, reason="needs torch.distributed.fsdp.fully_shard (FSDP2)")
def test_fsdp2_equals_single_process(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ranks = _spawn(_fsdp_worker, str(tmp_path / "fsdp"))
    x, y = _images()
    for name in FSDP_NAMES:
        net = _Net()
        _train_net(net, hamopt.create(name, net.parameters(), **_fsdp_kwargs(name)), x, y)
        for p, a, b in zip(net.parameters(), ranks[0][name], ranks[1][name]):
            assert torch.equal(a, b), f"{name}: ranks disagree"
            # The gradients are averaged by a reduce-scatter: the same to rounding, which the
            # SVD bases of these tiny matrices amplify a little (AdaDiag family: 1e-13 relative).
            tol = dict(rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(a, p.detach(), **tol, msg=f"{name}: FSDP2 != single process")
    for key, kw in FED.items():
        single, single_bases = _fed_run(kw)
        (w0, b0), (w1, b1) = ranks[0][f"fed:{key}"], ranks[1][f"fed:{key}"]
        assert len(b0) == len(single_bases) > 0
        for a, c, s in zip(b0, b1, single_bases):
            assert torch.equal(a, c), f"{key}: the bases differ between ranks"
            torch.testing.assert_close(a, s, rtol=1e-12, atol=1e-13)
        for a, c, s in zip(w0, w1, single):
            assert torch.equal(a, c)
            torch.testing.assert_close(a, s, rtol=1e-12, atol=1e-13, msg=f"AdaDiag {key}: sharded != single process")
    for name in RESUMED:
        straight, resumed = ranks[0][f"resumed:{name}"]
        for a, b in zip(straight, resumed):
            assert torch.equal(a, b), f"{name}: a sharded run resumed from its state_dict differs"
    sharded = ranks[0]["ams:sign_buffer_sharded"]
    assert sharded and all(sharded), "AMS's sign buffer, created mid-run, is not a DTensor shard"


#: HSDP: a 2 x 2 mesh (replicate x shard), so the gathers run over both mesh dimensions; AdaDiag
#: and H-Fac run on gathered tensors (AdamW beside them in the FSDP2 test on shards as they are).
HSDP_NAMES = ["adadiag", "hfac"]


def _hsdp_worker(rank: int, out: str) -> dict:
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
    x, y = _images()
    shard = slice(rank * 4, (rank + 1) * 4)
    results = {}
    for name in HSDP_NAMES:
        net = _Net()
        for module in (net.conv, net.a, net.b, net.h):
            fully_shard(module, mesh=mesh)
        fully_shard(net, mesh=mesh)
        _train_net(net, hamopt.create(name, net.parameters(), **_fsdp_kwargs(name)), x[shard], y[shard])
        results[name] = [p.detach().full_tensor() for p in net.parameters()]
    return results


@pytest.mark.skipif(fully_shard is None, reason="needs torch.distributed.fsdp.fully_shard (FSDP2)")
def test_hsdp_2d_mesh_equals_single_process(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ranks = _spawn(_hsdp_worker, str(tmp_path / "hsdp"), world=4)
    x, y = _images()
    for name in HSDP_NAMES:
        net = _Net()
        _train_net(net, hamopt.create(name, net.parameters(), **_fsdp_kwargs(name)), x, y)
        for k, p in enumerate(net.parameters()):
            assert all(torch.equal(r[name][k], ranks[0][name][k]) for r in ranks), f"{name}: ranks disagree"
            torch.testing.assert_close(ranks[0][name][k], p.detach(), rtol=1e-10, atol=1e-12,
                                       msg=f"{name}: HSDP != single process")


# ---------------------------------------------------------------------------- float32, small batches
# The tests above train float64 models on batches at least as large as the layers are wide, so
# every gradient has full rank and float64 rounding (1e-16) stays far below Adam's eps: they
# could not show that AdaDiag amplified rounding noise in the null space of a rank-deficient
# gradient (issue 15, problem 1). Here a float32 16-32-8 MLP takes 8 fresh samples per step
# (4 per rank): every gradient has rank <= 8 < 16, and the two-sided variants complete their
# larger basis on every layer. Before the fix AdaDiag ended 20-100% (relative to how far the
# parameters moved) away from one process; now every variant agrees to float32 rounding, like
# AdamW beside them.
MLP_NAMES = ["adamw", "adadiag", "adadiag++", "adafacdiag", "adafacdiag++"]
MLP_STEPS = 12
MLP_KW: dict[str, dict] = {"adamw": dict(lr=1e-2), "adadiag": dict(lr=1e-2, svd_interval=4),
                           "adadiag++": dict(lr=1e-2, svd_interval=4, first_svd_step=2),
                           "adafacdiag": dict(lr=1e-2, svd_interval=4),
                           "adafacdiag++": dict(lr=1e-2, svd_interval=4, first_svd_step=2)}
#: Relative distance to one process, ||a - b|| / ||b - b_0|| over all parameters: float32
#: rounding of the averaged gradient, carried through 12 steps (measured: 1e-7 to 1e-6).
MLP_RTOL = 1e-4


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8))


def _mlp_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(8, 16, generator=g), torch.randn(8, 8, generator=g)) for _ in range(MLP_STEPS)]


def _train_mlp(model: torch.nn.Module, opt: torch.optim.Optimizer, rows: slice) -> None:
    for x, y in _mlp_batches():
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x[rows]), y[rows]).backward()
        opt.step()


def _mlp_worker(rank: int, out: str) -> dict:
    from torch.distributed.device_mesh import init_device_mesh

    rows = slice(rank * 4, (rank + 1) * 4)
    results: dict = {}
    for name in MLP_NAMES:
        ddp = torch.nn.parallel.DistributedDataParallel(_mlp())
        _train_mlp(ddp, hamopt.create(name, ddp.parameters(), **MLP_KW[name]), rows)
        results[f"ddp:{name}"] = [p.detach().clone() for p in ddp.module.parameters()]
        if fully_shard is not None:
            net = _mlp()
            mesh = init_device_mesh("cpu", (2,))
            for module in (net[0], net[2]):
                fully_shard(module, mesh=mesh)
            fully_shard(net, mesh=mesh)
            _train_mlp(net, hamopt.create(name, net.parameters(), **MLP_KW[name]), rows)
            results[f"fsdp:{name}"] = [p.detach().full_tensor() for p in net.parameters()]
    return results


def mlp_gaps(ranks: list[dict]) -> dict[str, float]:
    """``{"ddp:adadiag": relative distance to one process, ...}`` (also used by the report script)."""
    gaps = {}
    start = [p.detach().clone() for p in _mlp().parameters()]
    for name in MLP_NAMES:
        model = _mlp()
        _train_mlp(model, hamopt.create(name, model.parameters(), **MLP_KW[name]), slice(0, 8))
        ref = [p.detach() for p in model.parameters()]
        moved = torch.cat([(r - s).flatten() for r, s in zip(ref, start)]).norm()
        for kind in ("ddp", "fsdp"):
            key = f"{kind}:{name}"
            if key not in ranks[0]:
                continue
            for a, b in zip(ranks[0][key], ranks[1][key]):
                assert torch.equal(a, b), f"{key}: ranks disagree"
            gap = torch.cat([(a - r).flatten() for a, r in zip(ranks[0][key], ref)]).norm()
            gaps[key] = float(gap / moved)
    return gaps


def test_float32_small_batch_mlp_equals_single_process(tmp_path) -> None:  # type: ignore[no-untyped-def]
    gaps = mlp_gaps(_spawn(_mlp_worker, str(tmp_path / "mlp")))
    assert len(gaps) == len(MLP_NAMES) * (1 if fully_shard is None else 2)
    bad = {k: f"{v:.2e}" for k, v in gaps.items() if not v <= MLP_RTOL}
    assert not bad, f"distributed != one process (relative to the distance moved): {bad}"
