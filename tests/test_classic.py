"""The classic entries and the Adam transform that the Adam-based families build on.

``scale_by_adam`` is hamopt's own code; here it is proved equal to ``torch.optim.Adam`` and
``torch.optim.AdamW`` (including AMSGrad) over many steps with random gradients in float64.
The registry entries for the lecture's classic optimizers are configured torch classes.
"""

from __future__ import annotations

import pytest
import torch

import hamopt
from hamopt import ChainedOptimizer, chain
from hamopt.transforms import add_decayed_weights, scale_by_adam, scale_by_learning_rate

SHAPES = [(7, 3), (3, 7), (11,), (), (2, 3, 2, 2), (0, 5)]


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("foreach", [True, False])
def test_scale_by_adam_equals_torch_adamw(amsgrad: bool, weight_decay: float, foreach: bool) -> None:
    g = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=g, dtype=torch.float64) for s in SHAPES]
    ours = [torch.nn.Parameter(t.clone()) for t in init]
    ref = [torch.nn.Parameter(t.clone()) for t in init]
    opt = ChainedOptimizer(
        ours,
        dict(lr=3e-3, betas=(0.8, 0.95), eps=1e-7, weight_decay=weight_decay),
        chain(scale_by_adam(amsgrad=amsgrad), add_decayed_weights(), scale_by_learning_rate()),
        foreach=foreach,
    )
    torch_opt = torch.optim.AdamW(ref, lr=3e-3, betas=(0.8, 0.95), eps=1e-7, weight_decay=weight_decay,
                                  amsgrad=amsgrad, foreach=False)
    for _ in range(50):
        for a, b in zip(ours, ref):
            grad = torch.randn(a.shape, generator=g, dtype=torch.float64) * 3
            a.grad, b.grad = grad.clone(), grad.clone()
        opt.step()
        torch_opt.step()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(opt.state[a]["exp_avg_sq"], torch_opt.state[b]["exp_avg_sq"],
                                   rtol=1e-12, atol=1e-15)


def test_scale_by_adam_without_decay_equals_torch_adam() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.nn.Parameter(torch.randn(5, 4, generator=g, dtype=torch.float64))
    b = torch.nn.Parameter(a.detach().clone())
    opt = ChainedOptimizer([a], dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8),
                           chain(scale_by_adam(), scale_by_learning_rate()))
    ref = torch.optim.Adam([b], lr=1e-2)
    for _ in range(50):
        grad = torch.randn(5, 4, generator=g, dtype=torch.float64)
        a.grad, b.grad = grad.clone(), grad.clone()
        opt.step()
        ref.step()
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize(
    ("name", "cls", "expect"),
    [
        ("sgd", torch.optim.SGD, dict(momentum=0.0)),
        ("momentum", torch.optim.SGD, dict(momentum=0.9, nesterov=False)),
        ("nesterov", torch.optim.SGD, dict(momentum=0.9, nesterov=True)),
        ("adagrad", torch.optim.Adagrad, {}),
        ("adadelta", torch.optim.Adadelta, dict(rho=0.9)),
        ("rmsprop", torch.optim.RMSprop, dict(alpha=0.99)),
        ("adam", torch.optim.Adam, dict(amsgrad=False, fused=True)),
        ("adamw", torch.optim.AdamW, dict(weight_decay=1e-2, fused=True)),
        ("adamax", torch.optim.Adamax, {}),
        ("nadam", torch.optim.NAdam, {}),
        ("radam", torch.optim.RAdam, {}),
        ("amsgrad", torch.optim.Adam, dict(amsgrad=True)),
        ("adafactor", torch.optim.Adafactor, {}),
    ],
)
def test_classic_entries_are_configured_torch_optimizers(name: str, cls: type, expect: dict) -> None:
    opt = hamopt.create(name, [torch.nn.Parameter(torch.zeros(3))])
    assert isinstance(opt, cls)
    for k, v in expect.items():
        assert opt.param_groups[0][k] == v, (name, k)


def test_fused_is_not_forced_when_the_user_chooses() -> None:
    opt = hamopt.create("adamw", [torch.nn.Parameter(torch.zeros(3))], foreach=True)
    assert opt.param_groups[0]["foreach"] is True
    assert not opt.param_groups[0]["fused"]


# ---------------------------------------------------------------------------- fused only where safe
# Issue 15, problem 4: torch 2.13's fused CPU Adam/AdamW kernel writes past a strided view
# parameter (base[..., 0] also changes base[..., 1]); the adam, adamw and amsgrad entries and
# Lookahead's default base chose fused=True whatever the tensors.
STRIDED = ["adam", "adamw", "amsgrad", "lookahead"]


def _loop_reference(name: str, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    kw = dict(lr=0.05, foreach=False)
    if name == "adam":
        return torch.optim.Adam(params, **kw)
    if name == "amsgrad":
        return torch.optim.Adam(params, amsgrad=True, **kw)
    inner = torch.optim.AdamW(params, weight_decay=1e-2, **kw)
    return hamopt.Lookahead(inner, k=5, alpha=0.5) if name == "lookahead" else inner


@pytest.mark.parametrize("name", STRIDED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_strided_view_parameter_leaves_its_neighbour_alone(name: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, 2, generator=g, dtype=dtype)
    neighbour = base[..., 1].clone()
    view = base[..., 0].requires_grad_(True)  # a leaf: the view of a tensor that needs no grad
    plain = torch.nn.Parameter(torch.randn(4, 3, generator=g, dtype=dtype))
    assert not view.is_contiguous()
    opt = hamopt.create(name, [view, plain], lr=0.05)
    inner = getattr(opt, "base_optimizer", opt)
    assert inner.param_groups[0]["fused"] is True  # hamopt still picks the fused kernel ...
    copies = [view.detach().clone().requires_grad_(True), plain.detach().clone().requires_grad_(True)]
    ref = _loop_reference(name, copies)
    for _ in range(7):
        grads = [torch.randn(p.shape, generator=g, dtype=dtype) for p in copies]
        for p, q, gr in zip((view, plain), copies, grads):
            p.grad, q.grad = gr.clone(), gr.clone()
        opt.step()
        ref.step()
    assert torch.equal(base[..., 1], neighbour), f"{name}: the step wrote into the neighbouring slice"
    for p, q in zip((view, plain), copies):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5 if dtype == torch.float32 else 1e-12,
                                   atol=1e-6 if dtype == torch.float32 else 1e-13)
    assert inner.param_groups[0]["fused"] is True  # ... and keeps it for steps where it is safe


def test_contiguous_parameters_still_take_the_fused_kernel() -> None:
    """The guard changes nothing for dense contiguous parameters: bit-for-bit torch's fused run."""
    g = torch.Generator().manual_seed(1)
    init = [torch.randn(s, generator=g) for s in [(7, 3), (5,)]]
    ours = [torch.nn.Parameter(t.clone()) for t in init]
    theirs = [torch.nn.Parameter(t.clone()) for t in init]
    opt = hamopt.create("adamw", ours, lr=0.01)
    ref = torch.optim.AdamW(theirs, lr=0.01, fused=True)
    calls = []
    opt.register_step_post_hook(lambda *a: calls.append(1))
    for _ in range(5):
        for a, b in zip(ours, theirs):
            a.grad = torch.randn(a.shape, generator=g)
            b.grad = a.grad.clone()
        opt.step()
        ref.step()
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    assert isinstance(opt, torch.optim.AdamW) and len(calls) == 5  # step hooks fire once per step
