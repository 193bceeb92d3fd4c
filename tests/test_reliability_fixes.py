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


# ---------------------------------------------------------------------------- Sophia
def _sophia_problem() -> tuple[list[torch.nn.Parameter], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(4)
    ps = [torch.nn.Parameter(torch.randn(5, 3, generator=g)), torch.nn.Parameter(torch.randn(3, generator=g))]
    xs = [torch.randn(6, 5, generator=g) for _ in range(6)]
    return ps, xs


def _sophia_loss(ps: list[torch.nn.Parameter], x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x @ ps[0] + ps[1]).pow(2).sum() + 0.1 * ps[0].pow(4).sum()


def _sophia_run(scaler: torch.amp.GradScaler | None, inf_at: int | None = None):  # type: ignore[no-untyped-def]
    ps, xs = _sophia_problem()
    opt = hamopt.Sophia(ps, lr=0.05, k=2, weight_decay=0.0)
    for t, x in enumerate(xs):
        opt.zero_grad()
        loss = _sophia_loss(ps, x)
        if t == inf_at:
            loss = loss * float("inf")
        if scaler is None:
            loss.backward(create_graph=True)
            opt.step()
        else:
            scaler.scale(loss).backward(create_graph=True)
            scaler.step(opt)
            scaler.update()
    return ps, opt


def test_sophia_under_gradscaler_equals_the_unscaled_run() -> None:
    """Before: the Hessian estimate was 65536 times too large (the loss scale)."""
    ref_ps, ref = _sophia_run(None)
    ps, opt = _sophia_run(torch.amp.GradScaler("cpu", init_scale=2.0**16))
    for a, b in zip(ps, ref_ps):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for a, b in zip(ps, ref_ps):
        torch.testing.assert_close(opt.state[a]["hessian"], ref.state[b]["hessian"], rtol=1e-6, atol=1e-9)
        assert opt.state[a]["hessian"].abs().max() > 0


def test_sophia_under_gradscaler_skips_a_step_with_inf() -> None:
    """An inf loss at step 3: the scaler halves its scale and Sophia skips that step, so the run
    equals the one that never saw that batch's step (parameters and state untouched)."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    ps, opt = _sophia_run(scaler, inf_at=3)
    assert scaler.get_scale() < 2.0**16
    assert all(int(opt.state[p]["step"]) == 5 for p in ps)


def test_sophia_refuses_a_gradscaler_that_unscaled_first() -> None:
    ps, xs = _sophia_problem()
    opt = hamopt.Sophia(ps)
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(_sophia_loss(ps, xs[0])).backward(create_graph=True)
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match=r"without scaler.unscale_\(opt\)"):
        scaler.step(opt)


def test_sophia_step_hooks_fire_once_beside_other_chained_optimizers() -> None:
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from hamopt.transforms import scale_by_learning_rate

    plain = hamopt.ChainedOptimizer([torch.nn.Parameter(torch.zeros(2))], dict(lr=0.1), scale_by_learning_rate())
    assert getattr(hamopt.ChainedOptimizer.step, "hooked", False)  # torch wrapped the shell's own step
    plain.zero_grad()
    ps, xs = _sophia_problem()
    opt = hamopt.Sophia(ps)
    calls: list[str] = []
    opt.register_step_pre_hook(lambda *a: calls.append("pre"))
    handle = register_optimizer_step_post_hook(lambda o, *a: calls.append("global post") if o is opt else None)
    try:
        for x in xs[:3]:
            opt.zero_grad()
            _sophia_loss(ps, x).backward(create_graph=True)
            opt.step()
    finally:
        handle.remove()
    assert calls == ["pre", "global post"] * 3


def test_sophia_loss_linear_in_a_group_gives_a_zero_estimate() -> None:
    """The bias group enters the loss linearly (its gradient is constant, so it carries no
    graph although backward(create_graph=True) was called): its Hessian estimate is zero and
    no error is raised; the other group's estimate is not zero."""
    g = torch.Generator().manual_seed(5)
    w = torch.nn.Parameter(torch.randn(4, generator=g))
    b = torch.nn.Parameter(torch.randn(4, generator=g))
    opt = hamopt.Sophia([{"params": [w]}, {"params": [b]}], k=1)
    for _ in range(3):
        opt.zero_grad()
        x = torch.randn(4, generator=g)
        ((w * x).pow(3).sum() + (b * x).sum()).backward(create_graph=True)
        opt.step()
    assert torch.equal(opt.state[b]["hessian"], torch.zeros(4))
    assert opt.state[w]["hessian"].abs().min() > 0


def _encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)


def test_sophia_on_cpu_attention_says_what_works() -> None:
    """The real nn.TransformerEncoderLayer on the CPU: torch's fused attention kernel has no
    second derivative. The error names both ways out, and both work."""
    x = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(6))
    layer = _encoder()
    opt = hamopt.Sophia(layer.parameters(), k=1)
    layer(x).pow(2).mean().backward(create_graph=True)
    with pytest.raises(RuntimeError, match="estimator='gnb'") as err:
        opt.step()
    assert "SDPBackend.MATH" in str(err.value) and "_scaled_dot_product" in str(err.value)

    from torch.nn.attention import SDPBackend, sdpa_kernel

    layer = _encoder()
    opt = hamopt.Sophia(layer.parameters(), k=1)
    with sdpa_kernel(SDPBackend.MATH):
        layer(x).pow(2).mean().backward(create_graph=True)
        opt.step()
    assert all(opt.state[p]["hessian"].abs().sum() > 0 for p in layer.parameters() if p.dim() > 1)

    layer = _encoder()
    opt = hamopt.Sophia(layer.parameters(), k=1, estimator="gnb")
    out = layer(x)
    out.pow(2).mean().backward()

    def sampled() -> torch.Tensor:
        y = layer(x)
        return (y - (y.detach() + torch.randn_like(y))).pow(2).mean(dim=(1, 2))

    opt.step(sampled)
    assert all(torch.isfinite(p).all() for p in layer.parameters())


# ---------------------------------------------------------------------------- complex parameters
#: Entries that refuse complex parameters with a message naming the optimizer (first step):
#: Sophia differentiates through the parameters; torch.optim.Adafactor (torch's own message).
COMPLEX_REFUSED = {"sophia": "Sophia does not support complex parameters",
                   "adafactor": "Adafactor does not support complex"}


@pytest.mark.parametrize("name", NAMES)
def test_complex_parameters_step_as_their_view_as_real(name: str) -> None:
    """torch's rule: a complex parameter is optimized as ``torch.view_as_real(p)`` (real and
    imaginary parts are two coordinates). Before: ranger and adamw_variant accumulated G*G
    (complex second moments), adadiag(++) dropped the imaginary part, the rest failed inside
    torch."""
    info = hamopt.get(name)
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (5,), (2, 3, 2), ()]
    init = [torch.randn(s, dtype=torch.complex128, generator=g) for s in shapes]
    as_complex = [torch.nn.Parameter(t.clone()) for t in init]
    as_real = [torch.nn.Parameter(torch.view_as_real(t).clone()) for t in init]
    kw = dict(info.test_kwargs)
    if info.test_lr is not None and "lr" in info.defaults:
        kw["lr"] = info.test_lr
    opt_c, opt_r = info.create(as_complex, **kw), info.create(as_real, **kw)
    for _ in range(6):
        for p, q in zip(as_complex, as_real):
            gr = torch.randn(p.shape, dtype=torch.complex128, generator=g)
            p.grad, q.grad = gr, torch.view_as_real(gr).clone()
        if name in COMPLEX_REFUSED:
            with pytest.raises((TypeError, RuntimeError), match=COMPLEX_REFUSED[name]):
                opt_c.step()
            return
        opt_c.step()
        opt_r.step()
    for p, q in zip(as_complex, as_real):
        assert p.dtype == torch.complex128
        torch.testing.assert_close(torch.view_as_real(p.detach()), q.detach(), rtol=1e-13, atol=1e-15)
    assert any(not torch.equal(p.detach(), t) for p, t in zip(as_complex, init))


@pytest.mark.parametrize("amsgrad", [False, True])
def test_complex_adam_chain_equals_torch_adamw(amsgrad: bool) -> None:
    """The shell's view_as_real rule is torch's: hamopt's Adam chain on complex parameters
    equals torch.optim.AdamW on the same complex parameters."""
    from hamopt.transforms import add_decayed_weights, chain, scale_by_adam, scale_by_learning_rate

    g = torch.Generator().manual_seed(2)
    init = [torch.randn(s, dtype=torch.complex128, generator=g) for s in [(3, 4), (6,)]]
    ours = [torch.nn.Parameter(t.clone()) for t in init]
    ref = [torch.nn.Parameter(t.clone()) for t in init]
    opt = hamopt.ChainedOptimizer(
        ours, dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1),
        chain(scale_by_adam(amsgrad=amsgrad), add_decayed_weights(), scale_by_learning_rate()))
    torch_opt = torch.optim.AdamW(ref, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1, amsgrad=amsgrad,
                                  foreach=False)
    for _ in range(20):
        for a, b in zip(ours, ref):
            gr = torch.randn(a.shape, dtype=torch.complex128, generator=g)
            a.grad, b.grad = gr.clone(), gr.clone()
        opt.step()
        torch_opt.step()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
