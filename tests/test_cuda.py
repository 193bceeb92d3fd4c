"""CUDA: every registered optimizer gives the CPU result on a GPU (skipped without one)."""

from __future__ import annotations

import pytest
import torch

import hamopt
from conftest import ALL_NAMES, backward, make_opt

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# Two matrices of one shape, so the GPU's batched paths (H-Fac's stacks, AdaDiag's bmm) run
# and meet the CPU's per-matrix ones.
SHAPES = [(33, 17), (33, 17), (17,), (), (4, 3, 3, 3), (0, 5)]


@pytest.mark.parametrize("name", ALL_NAMES)
def test_cuda_matches_cpu(name: str) -> None:
    info = hamopt.get(name)
    results = {}
    for device in ("cpu", "cuda"):
        g = torch.Generator().manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64).to(device)) for s in SHAPES]
        opt = make_opt(info, ps)
        for step in range(6):
            opt.zero_grad(set_to_none=True)
            gen = torch.Generator().manual_seed(step)
            loss = sum(((p - 0.5) ** 2).sum() + (torch.randn(p.shape, generator=gen, dtype=torch.float64)
                                                 .to(device) * p).sum() for p in ps)
            backward(info, loss)
            opt.step()
        results[device] = [p.detach().cpu() for p in ps]
    if info.needs_hessian:
        # Hutchinson probes come from each device's own random generator, so CPU and CUDA
        # draw different probes: only finiteness is comparable here.
        assert all(torch.isfinite(b).all() for b in results["cuda"])
        return
    for a, b in zip(results["cpu"], results["cuda"]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["adamw", "adam"])
def test_fused_torch_entries_on_cuda(name: str) -> None:
    p = torch.nn.Parameter(torch.randn(8, 8, device="cuda"))
    opt = hamopt.create(name, [p])
    assert opt.param_groups[0]["fused"] is True
    p.grad = torch.randn_like(p)
    opt.step()
    assert torch.isfinite(p).all()


def test_bf16_on_cuda_keeps_float32_state() -> None:
    from hamopt import ChainedOptimizer, chain
    from hamopt.transforms import add_decayed_weights, scale_by_adam, scale_by_learning_rate

    p = torch.nn.Parameter(torch.randn(16, 16, device="cuda", dtype=torch.bfloat16))
    opt = ChainedOptimizer([p], dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1),
                           chain(scale_by_adam(), add_decayed_weights(), scale_by_learning_rate()))
    p.grad = torch.randn_like(p)
    opt.step()
    assert p.dtype == torch.bfloat16 and opt.state[p]["exp_avg"].dtype == torch.float32
    assert opt.state[p]["exp_avg"].device.type == "cuda"


def _ours(name: str) -> bool:
    f = hamopt.get(name).factory
    return isinstance(f, type) and issubclass(f, hamopt.ChainedOptimizer)


@pytest.mark.parametrize("name", [n for n in ALL_NAMES if _ours(n)])
def test_no_host_sync_inside_a_step(name: str) -> None:
    """A steady-state step never waits for the GPU (no .item(), no host-to-device copy):
    torch.cuda.set_sync_debug_mode("error") raises on any synchronising call."""
    info = hamopt.get(name)
    kw: dict = {k: 10**9 for k in info.defaults if "interval" in k}  # no refresh at the checked step
    if "first_svd_step" in info.defaults:
        kw["first_svd_step"] = 1  # a basis from step 1, so the checked step rotates
    ps = [torch.nn.Parameter(torch.randn(s, device="cuda")) for s in SHAPES]
    opt = make_opt(info, ps, **kw)
    for step in range(3):
        opt.zero_grad(set_to_none=True)
        backward(info, sum(((p - 0.5) ** 2).sum() for p in ps))
        if step == 2:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("name", ["lion", "grams", "hfac"])
def test_compile_step_on_cuda_matches_eager(name: str) -> None:
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=g) for s in [(64, 32), (64, 32), (32,)]]
    runs = []
    for compiled in (False, True):
        ps = [torch.nn.Parameter(t.clone().cuda()) for t in init]
        opt = hamopt.create(name, ps, lr=1e-2)
        if compiled:
            hamopt.compile_step(opt)
        for step in range(4):
            gen = torch.Generator().manual_seed(step)
            for p in ps:
                p.grad = torch.randn(p.shape, generator=gen).cuda()
            opt.step()
        runs.append([p.detach().cpu() for p in ps])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
