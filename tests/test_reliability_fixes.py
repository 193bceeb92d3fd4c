"""Issue 15's optimizer-specific problems: Lookahead behaves like a torch optimizer (checkpoint
layout, hooks, named parameters), every registry entry takes named parameters and rejects a bare
tensor like torch, Sophia under GradScaler / with a zero Hessian / with CPU attention, and complex
parameters. (AdaDiag's rounding is tested in test_adadiag.py and test_distributed.py, the fused
kernel on strided parameters in test_classic.py.)"""

from __future__ import annotations

import copy

import pytest
import torch

import hamopt
from hamopt import Lookahead


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))


def _batches(n: int, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(5, 4, generator=g) for _ in range(n)]


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer, xs: list[torch.Tensor]) -> None:
    for x in xs:
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        opt.step()


# ---------------------------------------------------------------------------- Lookahead
def test_lookahead_state_dict_has_torch_layout_and_dcp_round_trips() -> None:
    """torch.distributed.checkpoint's get/set_optimizer_state_dict (its non-distributed path:
    parameters keyed by FQN) save a Lookahead and load it into a fresh one, which continues
    bit-for-bit. Before: KeyError 'param_groups'."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    xs = _batches(9)
    straight = _mlp()
    _train(straight, hamopt.create("lookahead", straight.parameters(), k=3, lr=0.05), xs)

    model = _mlp()
    la = hamopt.create("lookahead", model.parameters(), k=3, lr=0.05)
    _train(model, la, xs[:4])  # 4 steps: a synchronisation behind, one ahead
    sd = la.state_dict()
    assert set(sd) == {"state", "param_groups"} and sd["param_groups"][0]["lookahead_step"] == 4
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq", "slow_param"}
    saved = copy.deepcopy(get_optimizer_state_dict(model, la))
    assert "0.weight" in saved["state"] and "slow_param" in saved["state"]["0.weight"]

    resumed = copy.deepcopy(model)
    la2 = hamopt.create("lookahead", resumed.parameters(), k=7, alpha=0.9, lr=0.05)
    set_optimizer_state_dict(resumed, la2, saved)
    assert (la2.k, la2.alpha, la2.lookahead_step) == (3, 0.5, 4)
    _train(resumed, la2, xs[4:])
    for a, b in zip(resumed.parameters(), straight.parameters()):
        assert torch.equal(a, b)


def test_lookahead_loads_a_checkpoint_of_the_old_layout() -> None:
    """hamopt's earlier Lookahead wrote ``{"base_optimizer", "state", "lookahead"}``: it loads
    and continues bit-for-bit."""
    xs = _batches(8)
    straight = _mlp()
    _train(straight, Lookahead(torch.optim.SGD(straight.parameters(), lr=0.1, momentum=0.9), k=3), xs)
    model = _mlp()
    la = Lookahead(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=3)
    _train(model, la, xs[:5])
    params = list(model.parameters())
    old = {"base_optimizer": la.base_optimizer.state_dict(),
           "state": {i: {"slow_param": la.state[p]["slow_param"].clone()} for i, p in enumerate(params)},
           "lookahead": {"k": 3, "alpha": 0.5, "step": 5}}
    resumed = copy.deepcopy(model)
    la2 = Lookahead(torch.optim.SGD(resumed.parameters(), lr=0.1, momentum=0.9), k=4)
    la2.load_state_dict(copy.deepcopy(old))
    _train(resumed, la2, xs[5:])
    for a, b in zip(resumed.parameters(), straight.parameters()):
        assert torch.equal(a, b)


def test_lookahead_hooks_fire_once_each() -> None:
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    model = _mlp()
    la = hamopt.create("lookahead", model.parameters(), lr=0.05)
    calls: list[str] = []
    handles = [register_optimizer_step_pre_hook(lambda *a: calls.append("global pre")),
               register_optimizer_step_post_hook(lambda *a: calls.append("global post"))]
    try:
        la.register_step_pre_hook(lambda *a: calls.append("pre"))
        la.register_step_post_hook(lambda *a: calls.append("post"))
        la.base_optimizer.register_step_post_hook(lambda *a: calls.append("base post"))
        la.register_state_dict_pre_hook(lambda *a: calls.append("sd pre"))
        la.register_state_dict_post_hook(lambda *a: calls.append("sd post"))
        la.register_load_state_dict_pre_hook(lambda *a: calls.append("load pre"))
        la.register_load_state_dict_post_hook(lambda *a: calls.append("load post"))
        _train(model, la, _batches(2))
        assert sorted(calls) == sorted(["global pre", "pre", "base post", "post", "global post"] * 2)
        calls.clear()
        la.load_state_dict(la.state_dict())
        assert calls == ["sd pre", "sd post", "load pre", "load post"]
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------------------- named parameters
NAMES = hamopt.list_optimizers()


def _step_all(name: str, params, model: torch.nn.Module) -> torch.optim.Optimizer:  # type: ignore[no-untyped-def]
    info = hamopt.get(name)
    opt = info.create(params, **info.test_kwargs)
    for x in _batches(3):
        opt.zero_grad()
        loss = model(x).pow(2).sum()
        loss.backward(create_graph=info.step_needs == "graph")
        opt.step(closure=None)
    return opt


@pytest.mark.parametrize("name", NAMES)
def test_named_parameters_are_accepted_like_torch(name: str) -> None:
    """``hamopt.create(name, model.named_parameters())`` runs exactly like the plain parameters
    and keeps ``param_names`` in the groups (torch >= 2.6's behaviour)."""
    named, plain = _mlp(), _mlp()
    opt = _step_all(name, named.named_parameters(), named)
    _step_all(name, plain.parameters(), plain)
    assert opt.param_groups[0]["param_names"] == [n for n, _ in named.named_parameters()]
    assert opt.state_dict()["param_groups"][0]["param_names"] == opt.param_groups[0]["param_names"]
    for a, b in zip(named.parameters(), plain.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_a_bare_tensor_is_rejected_like_torch(name: str) -> None:
    with pytest.raises(TypeError, match="should be an iterable of Tensors or dicts"):
        hamopt.create(name, torch.zeros(3, requires_grad=True))
