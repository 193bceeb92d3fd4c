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

SHAPES = [(33, 17), (17,), (), (4, 3, 3, 3), (0, 5)]


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
