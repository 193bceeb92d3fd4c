"""torch.optim's optimizer contract, checked for every registry entry.

PyTorch holds each ``torch.optim`` optimizer to one set of behaviours (``test/test_optim.py``
over the ``OptimizerInfo`` table of ``torch/testing/_internal/common_optim.py``). This module
asks the same of every hamopt entry (our own code, the behaviours ported): steps without
gradients and with zero gradients change nothing, a checkpoint resumes deterministically and
may hold a Python number as ``step``, older checkpoints without the newer group keys load,
``deepcopy`` and ``pickle`` keep the optimizer, per-group and tensor learning rates, every
optimizer hook fires exactly once, the common LR schedulers (OneCycleLR and CyclicLR cycling
the momentum into ``betas[0]``), the multi-tensor path equals the per-tensor one on strided
and non-contiguous tensors, ``zero_grad`` both ways, named parameters, ``GradScaler``, and
hamopt's own ``nonfinite`` setting.

Every entry passes every check (issue 15's problems 3 to 6, once marked as strict xfails
here, are fixed).
"""

from __future__ import annotations

import copy
import io
import pickle
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.optim import lr_scheduler as S
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import hamopt
from conftest import ALL_NAMES, backward, make_opt
from hamopt.registry import OptimizerInfo
from hamopt.transforms import scale_by_learning_rate


def _is_chained(name: str) -> bool:
    return isinstance(hamopt.create(name, [torch.nn.Parameter(torch.zeros(1))]), hamopt.ChainedOptimizer)


CHAINED = [n for n in ALL_NAMES if _is_chained(n)]


@pytest.fixture(params=CHAINED)
def chained(request: pytest.FixtureRequest) -> OptimizerInfo:
    """The registry entries that are hamopt ChainedOptimizers (not torch.optim classes)."""
    return hamopt.get(request.param)


#: The entries that are torch.optim classes (family "classic").
CLASSIC = [n for n in ALL_NAMES if hamopt.get(n).family == "classic"]
#: The classic entries that pick torch's fused kernel by default (named parameters crash there).
FUSED_DEFAULT = ("adam", "adamw", "amsgrad")


def _wb(seed: int = 0, dtype: torch.dtype = torch.float32) -> list[torch.nn.Parameter]:
    """A weight, a bias and a small matrix (factored and rotated rules see a real matrix)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in ((3, 4), (3,), (4, 2))]


def _loss(ps: list[torch.Tensor], step: int) -> torch.Tensor:
    """A fixed quadratic plus step-dependent linear terms (moments see real variation)."""
    g = torch.Generator().manual_seed(500 + step)
    total = torch.zeros((), dtype=torch.float32)
    for p in ps:
        r = torch.randn(p.shape, generator=g).to(p.dtype)
        total = total + (0.5 * (p - 0.3) ** 2 + r * p).sum().float()
    return total


def _grad_step(info: OptimizerInfo, opt: torch.optim.Optimizer, ps: list[torch.Tensor], step: int) -> None:
    opt.zero_grad(set_to_none=True)
    backward(info, _loss(ps, step))
    opt.step()


def _run(info: OptimizerInfo, opt: torch.optim.Optimizer, ps: list[torch.Tensor], start: int, n: int) -> None:
    for s in range(start, start + n):
        _grad_step(info, opt, ps, s)
    opt.zero_grad(set_to_none=True)


def _clone(ps: list[torch.Tensor]) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(p.detach().clone()) for p in ps]


def _assert_same(a: list[torch.Tensor], b: list[torch.Tensor], what: str) -> None:
    for i, (x, y) in enumerate(zip(a, b)):
        assert torch.equal(x.detach(), y.detach()), f"{what}: tensor {i} differs by {(x - y).abs().max():.3g}"


def _state_tensors(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor of the state_dict, in a fixed order (wrappers' nested dicts included)."""
    out: list[torch.Tensor] = []

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            out.append(x.detach().clone())
        elif isinstance(x, dict):
            for k in sorted(x, key=str):
                walk(x[k])
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(opt.state_dict())
    return out


def _no_decay(info: OptimizerInfo) -> dict[str, Any]:
    return {"weight_decay": 0.0} if "weight_decay" in info.defaults else {}


# ---------------------------------------------------------------------------- steps that change nothing


def test_step_without_grads_changes_nothing(info: OptimizerInfo) -> None:
    ps = [torch.nn.Parameter(torch.randn(2, 3), requires_grad=False) for _ in range(2)]
    before = [p.detach().clone() for p in ps]
    opt = make_opt(info, ps)
    assert opt.step(lambda: torch.tensor(1.0)) is not None  # the closure's value comes back
    opt.step()
    _assert_same(ps, before, f"{info.name}: a step without gradients")
    if isinstance(opt, hamopt.ChainedOptimizer):
        assert all(len(opt.state[p]) == 0 for p in ps)


def test_step_with_zero_grads_changes_nothing(info: OptimizerInfo) -> None:
    # torch's test_step_is_noop_for_zero_grads: no weight decay, a zero gradient, no move.
    ps = [torch.nn.Parameter(torch.randn(5, 1)), torch.nn.Parameter(torch.randn(3, 4))]
    before = [p.detach().clone() for p in ps]
    opt = make_opt(info, ps, **_no_decay(info))
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        backward(info, sum((0.0 * p).sum() for p in ps))
        opt.step()
    _assert_same(ps, before, f"{info.name}: a step with zero gradients")


def test_optimizer_can_be_printed(info: OptimizerInfo) -> None:
    opt = make_opt(info, _wb())
    assert repr(opt)


def test_bare_tensor_params_is_a_type_error(request: pytest.FixtureRequest, info: OptimizerInfo) -> None:
    # torch: "params argument given to the optimizer should be an iterable of Tensors or dicts"
    # The classic entries' factory wraps a bare tensor in a list; Lookahead's default base is one.
    with pytest.raises(TypeError, match="iterable"):
        make_opt(info, torch.nn.Parameter(torch.zeros(2)))


# ---------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("named", [(False, False), (True, False), (False, True)],
                         ids=["plain", "named-to-plain", "plain-to-named"])
def test_state_dict_is_deterministic_and_resumes(request: pytest.FixtureRequest, info: OptimizerInfo,
                                                 named: tuple[bool, bool]) -> None:
    # torch's test_state_dict_deterministic: a fresh optimizer over equal (not identical)
    # parameters that loads the state dict continues identically, and their state dicts agree.

    def given(ps: list[torch.nn.Parameter], is_named: bool) -> Any:
        return [(f"layer{i}.w", p) for i, p in enumerate(ps)] if is_named else ps

    ps = _wb()
    opt = make_opt(info, given(ps, named[0]))
    _run(info, opt, ps, 0, 4)
    ps2 = _clone(ps)
    opt2 = make_opt(info, given(ps2, named[1]))
    saved = copy.deepcopy(opt.state_dict())
    opt2.load_state_dict(saved)
    _assert_same(_state_tensors(opt), _state_tensors(opt2), f"{info.name}: the loaded state")
    _run(info, opt, ps, 4, 4)
    _run(info, opt2, ps2, 4, 4)
    _assert_same(ps, ps2, f"{info.name}: resumed run")

    def without_names(sd: dict[str, Any]) -> dict[str, Any]:
        sd = copy.deepcopy(sd)
        for g in sd.get("param_groups", []):
            g.pop("param_names", None)
        return sd

    a, b = without_names(opt.state_dict()), without_names(opt2.state_dict())
    _assert_same(_flat(a), _flat(b), f"{info.name}: state dicts after the same steps")
    assert _skeleton(a) == _skeleton(b)
    if named[0] or named[1]:
        groups = opt2.state_dict()["param_groups"]
        assert groups[0]["param_names"] == ["layer0.w", "layer1.w", "layer2.w"]


def _flat(x: Any) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    if isinstance(x, torch.Tensor):
        out.append(x)
    elif isinstance(x, dict):
        for k in sorted(x, key=str):
            out += _flat(x[k])
    elif isinstance(x, (list, tuple)):
        for v in x:
            out += _flat(v)
    return out


def _skeleton(x: Any) -> Any:
    """The state dict with every tensor replaced by its dtype and shape (the rest compared as is)."""
    if isinstance(x, torch.Tensor):
        return ("tensor", x.dtype, tuple(x.shape))
    if isinstance(x, dict):
        return {k: _skeleton(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_skeleton(v) for v in x)
    return x


_STEP_FORMS: dict[str, Callable[[torch.Tensor], Any]] = {
    "float": lambda t: float(t.item()),
    "int": lambda t: int(t.item()),
    "int64-tensor": lambda t: t.to(torch.int64),
    "float64-tensor": lambda t: t.to(torch.float64),
    "1-element": lambda t: t.reshape(1),
}


def test_checkpoint_with_any_step_form_resumes_like_a_tensor_step(info: OptimizerInfo) -> None:
    # torch's test_load_nontensor_step, made stricter: the run continues exactly as with the
    # tensor the optimizer wrote (issue 15 problem 2: a float step crashed the next step).
    ps = _wb()
    opt = make_opt(info, ps)
    _run(info, opt, ps, 0, 3)
    saved = opt.state_dict()
    ps_a = _clone(ps)
    opt_a = make_opt(info, ps_a)
    opt_a.load_state_dict(copy.deepcopy(saved))
    _run(info, opt_a, ps_a, 3, 3)
    for form, convert in _STEP_FORMS.items():
        if form == "1-element" and info.name not in CHAINED:
            continue  # torch.optim classes want a 0-d tensor or a number: torch's own rule
        changed = copy.deepcopy(saved)
        n = 0
        for sd in _state_dicts_with_steps(changed):
            for st in sd["state"].values():
                if isinstance(st.get("step"), torch.Tensor):
                    st["step"] = convert(st["step"])
                    n += 1
        assert n > 0 or info.name in ("sgd", "momentum", "nesterov"), f"{info.name}: no step counter"
        ps_b = _clone(ps)
        opt_b = make_opt(info, ps_b)
        opt_b.load_state_dict(changed)
        _run(info, opt_b, ps_b, 3, 3)
        _assert_same(ps_a, ps_b, f"{info.name}: step stored as {form}")


def _state_dicts_with_steps(sd: dict[str, Any]) -> list[dict[str, Any]]:
    """``sd`` and the state dicts nested in it (a wrapper's base optimizer)."""
    out = [sd] if "state" in sd and "param_groups" in sd else []
    for v in sd.values():
        if isinstance(v, dict) and "state" in v and "param_groups" in v:
            out += _state_dicts_with_steps(v)
    return out


def test_older_state_dict_without_newer_group_keys_loads(info: OptimizerInfo) -> None:
    # torch's test_can_load_older_state_dict: flags added later are missing from old checkpoints.
    ps = _wb()
    opt = make_opt(info, ps)
    _run(info, opt, ps, 0, 3)
    old = copy.deepcopy(opt.state_dict())
    # hamopt's group keys (torch's own classes: torch tests which of its flags may be missing)
    keys = ("maximize", "foreach", "state_dtype", "nonfinite", "nonfinite_skipped") if info.name in CHAINED else ()
    for sd in _state_dicts_with_steps(old):
        for g in sd["param_groups"]:
            for key in keys:
                g.pop(key, None)
    opt.load_state_dict(old)
    _run(info, opt, ps, 3, 2)
    assert all(torch.isfinite(p).all() for p in ps)


def test_state_dict_saves_and_loads_weights_only(info: OptimizerInfo) -> None:
    # torch's test_save_load_equality_with_weights_only
    ps = _wb()
    opt = make_opt(info, ps)
    _run(info, opt, ps, 0, 3)
    sd = opt.state_dict()
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=True)
    assert _skeleton(back) == _skeleton(sd)
    _assert_same(_flat(back), _flat(sd), f"{info.name}: weights_only round trip")


def test_pickle_and_deepcopy_keep_the_optimizer(info: OptimizerInfo) -> None:
    ps = _wb()
    opt = make_opt(info, ps)
    _run(info, opt, ps, 0, 3)

    def public(o: Any) -> set[str]:
        return {k for k in o.__dict__ if not k.startswith("_")}

    assert public(copy.deepcopy(opt)) == public(opt)
    ps2, opt2 = pickle.loads(pickle.dumps((ps, opt)))
    ps3, opt3 = copy.deepcopy((ps, opt))
    for o, q in ((opt, ps), (opt2, ps2), (opt3, ps3)):
        _run(info, o, q, 3, 3)
    _assert_same(ps, ps2, f"{info.name}: unpickled copy")
    _assert_same(ps, ps3, f"{info.name}: deep copy")


# ---------------------------------------------------------------------------- learning rates


def test_tensor_lr_equals_float_lr(info: OptimizerInfo) -> None:
    lr = make_opt(info, _wb()).param_groups[0]["lr"]
    ps, ps2 = _wb(), _wb()
    opt = make_opt(info, ps, lr=lr)
    try:
        opt2 = make_opt(info, ps2, lr=torch.tensor(lr))
    except ValueError as e:  # torch's own classes: a tensor lr only with foreach=False / fused
        assert "lr as a Tensor" in str(e) or "Tensor lr" in str(e), str(e)
        opt2 = make_opt(info, ps2, lr=torch.tensor(lr), foreach=False)
    _run(info, opt, ps, 0, 4)
    _run(info, opt2, ps2, 0, 4)
    for a, b in zip(ps, ps2):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-7, msg=f"{info.name}: tensor lr != float lr")


def test_each_group_uses_its_own_lr(info: OptimizerInfo) -> None:
    # Two groups, the second with half the first's lr; each equals a one-group optimizer with its lr.
    lr = make_opt(info, _wb()).param_groups[0]["lr"]
    ps = _wb()
    opt = make_opt(info, [{"params": ps[:1]}, {"params": ps[1:], "lr": lr / 2}])
    solo_a, solo_b = _clone(ps[:1]), _clone(ps[1:])
    opt_a, opt_b = make_opt(info, solo_a), make_opt(info, solo_b, lr=lr / 2)
    for s in range(4):
        _grad_step(info, opt, ps, s)
        for o in (opt_a, opt_b):
            o.zero_grad(set_to_none=True)
        backward(info, _loss([*solo_a, *solo_b], s))
        opt_a.step()
        opt_b.step()
    _assert_same(ps, [*solo_a, *solo_b], f"{info.name}: per-group lr")


# ---------------------------------------------------------------------------- hooks


def test_step_hooks_fire_once_in_order(request: pytest.FixtureRequest, info: OptimizerInfo) -> None:
    # torch's test_step_all_hooks: global pre, local pre, local post, global post, once per step.
    # A plain ChainedOptimizer instance exists (torch then wraps ChainedOptimizer.step itself).
    hamopt.ChainedOptimizer([torch.nn.Parameter(torch.zeros(1))], {"lr": 0.1}, [scale_by_learning_rate()])
    calls: list[str] = []
    ps = _wb()
    opt = make_opt(info, ps)
    other = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    handles = [
        register_optimizer_step_pre_hook(lambda o, a, k: calls.append("global-pre")),
        register_optimizer_step_post_hook(lambda o, a, k: calls.append("global-post")),
        opt.register_step_pre_hook(lambda o, a, k: calls.append("pre")),
        opt.register_step_post_hook(lambda o, a, k: calls.append("post")),
    ]
    try:
        _grad_step(info, opt, ps, 0)
        assert calls == ["global-pre", "pre", "post", "global-post"], f"{info.name}: {calls}"
        other.step()
        assert calls[4:] == ["global-pre", "global-post"]
        _grad_step(info, opt, ps, 1)
        assert calls[6:] == ["global-pre", "pre", "post", "global-post"], f"{info.name}: {calls}"
    finally:
        for h in handles:
            h.remove()
    _grad_step(info, opt, ps, 2)
    assert len(calls) == 10, "removed hooks still fire"


def test_state_dict_hooks_fire_once(request: pytest.FixtureRequest, info: OptimizerInfo) -> None:
    # torch's state_dict / load_state_dict pre and post hooks (with prepend and a returned dict).
    ps = _wb()
    opt = make_opt(info, ps)
    _run(info, opt, ps, 0, 2)
    calls: list[str] = []
    lr = opt.param_groups[0]["lr"]

    def sd_post(o: torch.optim.Optimizer, sd: dict[str, Any]) -> dict[str, Any]:
        calls.append("sd-post")
        sd["marked"] = True
        return sd

    def load_pre(o: torch.optim.Optimizer, sd: dict[str, Any]) -> dict[str, Any]:
        calls.append("load-pre")
        sd = copy.deepcopy(sd)
        sd["param_groups"][0]["lr"] = lr / 4
        return sd

    def load_pre_first(o: torch.optim.Optimizer, sd: dict[str, Any]) -> None:
        calls.append("load-pre-first")

    opt.register_state_dict_pre_hook(lambda o: calls.append("sd-pre"))
    opt.register_state_dict_post_hook(sd_post)
    opt.register_load_state_dict_pre_hook(load_pre)
    opt.register_load_state_dict_pre_hook(load_pre_first, prepend=True)
    opt.register_load_state_dict_post_hook(lambda o: calls.append("load-post"))
    sd = opt.state_dict()
    assert calls == ["sd-pre", "sd-post"] and sd["marked"] is True
    opt.load_state_dict(sd)
    assert calls[2:] == ["load-pre-first", "load-pre", "load-post"], calls
    assert opt.param_groups[0]["lr"] == lr / 4, "the dict a load_state_dict pre hook returns is the one loaded"


# ---------------------------------------------------------------------------- LR schedulers


def _schedulers() -> dict[str, Callable[[torch.optim.Optimizer], Any]]:
    return {
        "StepLR": lambda o: S.StepLR(o, step_size=2, gamma=0.5),
        "MultiStepLR": lambda o: S.MultiStepLR(o, milestones=[2, 4], gamma=0.3),
        "ExponentialLR": lambda o: S.ExponentialLR(o, gamma=0.8),
        "CosineAnnealingLR": lambda o: S.CosineAnnealingLR(o, T_max=5),
        "CosineAnnealingWarmRestarts": lambda o: S.CosineAnnealingWarmRestarts(o, T_0=3),
        "LinearLR": lambda o: S.LinearLR(o, start_factor=0.2, total_iters=4),
        "ConstantLR": lambda o: S.ConstantLR(o, factor=0.5, total_iters=3),
        "PolynomialLR": lambda o: S.PolynomialLR(o, total_iters=6, power=2.0),
        "LambdaLR": lambda o: S.LambdaLR(o, lambda e: 1.0 / (1 + e)),
        "MultiplicativeLR": lambda o: S.MultiplicativeLR(o, lambda e: 0.9),
        "SequentialLR": lambda o: S.SequentialLR(o, [S.LinearLR(o, 0.5, total_iters=2), S.ExponentialLR(o, 0.9)],
                                                 milestones=[2]),
        "ChainedScheduler": lambda o: S.ChainedScheduler([S.ConstantLR(o, 0.5, total_iters=2),
                                                          S.ExponentialLR(o, 0.9)]),
        "ReduceLROnPlateau": lambda o: S.ReduceLROnPlateau(o, patience=0, factor=0.5),
        "CyclicLR": lambda o: S.CyclicLR(o, base_lr=_lr0(o) / 10, max_lr=_lr0(o), step_size_up=2,
                                         cycle_momentum=_has_momentum(o)),
        "OneCycleLR": lambda o: S.OneCycleLR(o, max_lr=_lr0(o), total_steps=7, cycle_momentum=_has_momentum(o)),
    }


def _lr0(o: torch.optim.Optimizer) -> float:
    return float(o.param_groups[0]["lr"])


def _has_momentum(o: torch.optim.Optimizer) -> bool:
    return "momentum" in o.defaults or "betas" in o.defaults


def _momentum_of(group: dict[str, Any]) -> float:
    return float(group["betas"][0]) if "betas" in group else float(group["momentum"])


def test_lr_schedulers_drive_every_group(info: OptimizerInfo) -> None:
    # Each scheduler reaches the groups exactly as it reaches torch's SGD (the reference: torch
    # computes the expected values, not the code under test). OneCycleLR and CyclicLR also
    # cycle betas[0] (or momentum) as for torch's optimizers, and a run where their values
    # are written into the groups by hand takes the very same steps (the optimizer reads the
    # cycled momentum at every step).
    for name, make in _schedulers().items():
        ps = _wb()
        opt = make_opt(info, [{"params": ps[:2]}, {"params": ps[2:]}])
        lr = _lr0(opt)
        mom = _has_momentum(opt)
        ref_kw: dict[str, Any] = {"momentum": 0.9} if mom else {}
        ref = torch.optim.SGD([{"params": [torch.zeros(1)]}, {"params": [torch.zeros(1)]}], lr=lr, **ref_kw)
        sched, sched_ref = make(opt), make(ref)
        cyclic = name in ("CyclicLR", "OneCycleLR")  # these also drive betas[0]: follow them by hand
        manual_ps = _clone(ps)
        manual = make_opt(info, [{"params": manual_ps[:2]}, {"params": manual_ps[2:]}]) if cyclic else None
        keys = [k for k in ("betas", "momentum") if k in opt.param_groups[0]]
        for step in range(5):
            for g, g_sched in zip(manual.param_groups if manual else [], opt.param_groups):
                for k in ("lr", *keys):
                    g[k] = g_sched[k]
            for g, g_ref in zip(opt.param_groups, ref.param_groups):
                assert float(g["lr"]) == pytest.approx(float(g_ref["lr"]), rel=1e-12), f"{name} step {step}"
                if mom and name in ("CyclicLR", "OneCycleLR"):
                    assert _momentum_of(g) == pytest.approx(_momentum_of(g_ref), rel=1e-12), f"{name} step {step}"
            _grad_step(info, opt, ps, step)
            if manual is not None:
                _grad_step(info, manual, manual_ps, step)
            ref.step()
            args = (1.0,) if name == "ReduceLROnPlateau" else ()
            sched.step(*args)
            sched_ref.step(*args)
        if manual is not None:
            _assert_same(ps, manual_ps, f"{info.name} under {name}")
        assert all(torch.isfinite(p).all() for p in ps), f"{info.name} under {name}"


def test_cycle_momentum_needs_momentum_or_betas(info: OptimizerInfo) -> None:
    # As for torch's own optimizers: OneCycleLR cycles betas[0] (or momentum) when the
    # optimizer has one, and refuses cycle_momentum=True with torch's message when it has none.
    opt = make_opt(info, _wb())
    if _has_momentum(opt):
        S.OneCycleLR(opt, max_lr=0.1, total_steps=4)
        assert _momentum_of(opt.param_groups[0]) == pytest.approx(0.95)
        if "betas" in opt.param_groups[0]:
            assert len(opt.param_groups[0]["betas"]) == len(info.defaults.get("betas", opt.defaults["betas"]))
    else:
        with pytest.raises(ValueError, match="momentum"):
            S.OneCycleLR(opt, max_lr=0.1, total_steps=4)


# ---------------------------------------------------------------------------- tensors of every layout


def _strided_pair(seed: int) -> tuple[list[torch.nn.Parameter], torch.Tensor, list[torch.nn.Parameter]]:
    """Parameters that are strided views of bigger tensors (``base[..., 0]``, a transposed
    matrix), the bases, and contiguous copies."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(3, 4, 2, generator=g)
    a = torch.nn.Parameter(base[..., 0])  # a leaf viewing every other element of `base`
    b = torch.nn.Parameter(torch.randn(4, 3, generator=g).t())  # non-contiguous: a transposed matrix
    c = torch.nn.Parameter(torch.randn(6, generator=g)[::2].clone())
    assert not a.is_contiguous() and not b.is_contiguous()
    return [a, b, c], base, _clone([a, b, c])


def test_strided_params_and_grads_equal_contiguous(request: pytest.FixtureRequest, info: OptimizerInfo) -> None:
    # The same steps on strided parameters with strided gradients as on contiguous copies
    # with contiguous gradients, on the multi-tensor and the per-tensor path; the elements of
    # the base tensor between the views stay put.
    # torch.optim classes: their default path (torch tests its own for-loop)
    for kw in ({"foreach": True}, {"foreach": False}) if info.name in CHAINED else ({},):
        _check_strided(info, kw)


def _check_strided(info: OptimizerInfo, kw: dict[str, Any]) -> None:
    ps, base, flat = _strided_pair(0)
    untouched = base[..., 1].clone()
    opt, opt_flat = make_opt(info, ps, **kw), make_opt(info, flat, **kw)
    for s in range(4):
        for o, q in ((opt, ps), (opt_flat, flat)):
            o.zero_grad(set_to_none=True)
            backward(info, _loss(q, s))
        for p in ps:  # non-contiguous gradients too
            if info.step_needs != "graph":
                p.grad = p.grad.detach().t().contiguous().t() if p.dim() == 2 else p.grad
        opt.step()
        opt_flat.step()
    if info.name in CHAINED:
        _assert_same(ps, flat, f"{info.name} {kw}: strided != contiguous")
    else:  # torch's own kernels may reduce a strided tensor in another order (Adafactor: 1 ulp)
        for a, b in zip(ps, flat):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=f"{info.name}: strided != contiguous")
    assert torch.equal(base[..., 1], untouched), f"{info.name} wrote next to a strided parameter"


def test_foreach_equals_forloop_bitwise_float32(chained: OptimizerInfo) -> None:
    # The battery compares the paths in float64 to 1e-14; here float32, two groups, bit for bit
    # (torch.optim classes: torch tests its own).
    info = chained
    ps = _wb()
    ps2 = _clone(ps)
    opt = make_opt(info, [{"params": ps[:2]}, {"params": ps[2:]}], foreach=True)
    opt2 = make_opt(info, [{"params": ps2[:2]}, {"params": ps2[2:]}], foreach=False)
    _run(info, opt, ps, 0, 5)
    _run(info, opt2, ps2, 0, 5)
    _assert_same(ps, ps2, f"{info.name}: foreach != for-loop")
    _assert_same(_state_tensors(opt), _state_tensors(opt2), f"{info.name}: foreach state != for-loop state")


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad_both_ways(info: OptimizerInfo, set_to_none: bool) -> None:
    ps = _wb()
    opt = make_opt(info, ps)
    _grad_step(info, opt, ps, 0)
    opt.zero_grad(set_to_none=set_to_none)
    for p in ps:
        if set_to_none:
            assert p.grad is None
        else:
            assert p.grad is not None and not p.grad.requires_grad and torch.equal(p.grad, torch.zeros_like(p))
    # The next backward accumulates into nothing (None) or into zeros: the same step either way.
    ps2, opt2 = copy.deepcopy((ps, opt))
    opt2.zero_grad(set_to_none=not set_to_none)
    for o, q in ((opt, ps), (opt2, ps2)):
        backward(info, _loss(q, 1))
        o.step()
    _assert_same(ps, ps2, f"{info.name}: zero_grad(set_to_none={set_to_none}) then a step")


def test_named_parameters_of_a_module(request: pytest.FixtureRequest, info: OptimizerInfo) -> None:
    # torch >= 2.6 takes model.named_parameters(); the names land in param_groups[i]["param_names"].
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    twin = copy.deepcopy(model)
    opt = make_opt(info, model.named_parameters())
    opt2 = make_opt(info, twin.parameters())
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    for o, m in ((opt, model), (opt2, twin)):
        for _ in range(3):
            o.zero_grad(set_to_none=True)
            backward(info, (m(x) ** 2).sum())
            o.step()
    _assert_same(list(model.parameters()), list(twin.parameters()), f"{info.name}: named != plain")
    assert opt.state_dict()["param_groups"][0]["param_names"] == ["0.weight", "0.bias", "2.weight", "2.bias"]


# ---------------------------------------------------------------------------- complex parameters


def test_complex_params_follow_view_as_real_or_are_rejected(request: pytest.FixtureRequest,
                                                            info: OptimizerInfo) -> None:
    # torch's test_complex: a complex parameter steps like its view_as_real; hamopt may
    # instead reject complex parameters up front with one message naming the optimizer.
    g = torch.Generator().manual_seed(0)
    z = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.complex64, generator=g))
    r = torch.nn.Parameter(torch.view_as_real(z.detach()).clone())
    opt_r = make_opt(info, [r])
    try:
        opt = make_opt(info, [z])
        for s in range(3):
            gz = torch.randn(4, 3, dtype=torch.complex64, generator=torch.Generator().manual_seed(10 + s))
            z.grad, r.grad = gz, torch.view_as_real(gz).clone()
            opt.step()
            opt_r.step()
    except (ValueError, TypeError, RuntimeError) as e:  # rejected: one message that says so, naming it
        msg = str(e).lower()
        assert "complex" in msg and (type(opt_r).__name__.lower() in msg or info.name in msg), str(e)
        return
    torch.testing.assert_close(torch.view_as_real(z.detach()), r.detach(), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------- mixed precision


def test_grad_scaler_equals_unscaled_and_skips_inf(request: pytest.FixtureRequest, info: OptimizerInfo) -> None:
    # scaler.step(opt) unscales by a power of two (exact), so a finite run equals the unscaled
    # one bit for bit; an inf gradient skips the step (parameters and state unchanged) and
    # halves the scale.
    ps, ps2 = _wb(), _wb()
    opt, opt2 = make_opt(info, ps), make_opt(info, ps2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=1000)
    for s in range(4):
        opt.zero_grad(set_to_none=True)
        opt2.zero_grad(set_to_none=True)
        backward(info, scaler.scale(_loss(ps, s)))
        scaler.step(opt)
        scaler.update()
        backward(info, _loss(ps2, s))
        opt2.step()
    _assert_same(ps, ps2, f"{info.name}: GradScaler run != unscaled run")
    before_p = [p.detach().clone() for p in ps]
    before_s = _state_tensors(opt)
    opt.zero_grad(set_to_none=True)
    backward(info, scaler.scale(_loss(ps, 9)))
    ps[0].grad[0, 0] = float("inf")
    scaler.step(opt)
    scaler.update()
    _assert_same(ps, before_p, f"{info.name}: parameters after an inf step")
    _assert_same(_state_tensors(opt), before_s, f"{info.name}: state after an inf step")
    assert scaler.get_scale() == 2.0**15


# ---------------------------------------------------------------------------- non-finite gradients


def _poison(ps: list[torch.Tensor], which: int, value: float) -> None:
    ps[which].grad.view(-1)[1] = value


@pytest.mark.parametrize("value", [float("nan"), -float("inf")], ids=["nan", "-inf"])
def test_nonfinite_skip_leaves_group_untouched_and_counts(chained: OptimizerInfo, value: float) -> None:
    info = chained
    ps = _wb()
    ref = _clone(ps)
    opt = make_opt(info, [{"params": ps[:2], "nonfinite": "skip"}, {"params": ps[2:], "nonfinite": "skip"}])
    opt_ref = make_opt(info, [{"params": ref[:2]}, {"params": ref[2:]}])
    _run(info, opt, ps, 0, 2)
    _run(info, opt_ref, ref, 0, 2)
    before = [p.detach().clone() for p in ps]
    # Step 2: a bad gradient in group 0 only. Group 0 stays as it was, group 1 steps.
    opt.zero_grad(set_to_none=True)
    backward(info, _loss(ps, 2))
    _poison(ps, 1, value)
    opt.step()
    assert opt.param_groups[0]["nonfinite_skipped"] == 1 and opt.param_groups[1]["nonfinite_skipped"] == 0
    _assert_same(ps[:2], before[:2], f"{info.name}: a skipped group moved")
    assert not torch.equal(ps[2], before[2]), "the other group must step"
    for p, q in zip(ps[:2], ref[:2]):
        for k, v in opt.state[p].items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, opt_ref.state[q][k]), f"{info.name}: state {k!r} changed on a skipped step"
    # The skipped group then continues as if step 2 had never happened for it; the counter
    # survives a state_dict round trip.
    opt_ref.param_groups[1]["lr"] = 0.0  # group 1 of the reference: not compared from here
    sd = copy.deepcopy(opt.state_dict())
    assert sd["param_groups"][0]["nonfinite_skipped"] == 1
    ps2 = _clone(ps)
    opt2 = make_opt(info, [{"params": ps2[:2]}, {"params": ps2[2:]}])
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["nonfinite"] == "skip" and opt2.param_groups[0]["nonfinite_skipped"] == 1
    for s in (3, 4):
        for o, q in ((opt, ps), (opt2, ps2), (opt_ref, ref)):
            _grad_step(info, o, q, s)
    _assert_same(ps, ps2, f"{info.name}: resumed after a skip")
    _assert_same(ps[:2], ref[:2], f"{info.name}: the skipped group != a run without the bad step")


def test_nonfinite_raise_names_the_parameter_and_moves_nothing(chained: OptimizerInfo) -> None:
    info = chained
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    # The setting per group (the named optimizers' constructors pass the shell's keywords
    # they name; a group key reaches every ChainedOptimizer):
    named = list(model.named_parameters())
    opt = make_opt(info, [{"params": named[:2], "nonfinite": "raise"}, {"params": named[2:], "nonfinite": "raise"}])
    x = torch.randn(2, 3)
    backward(info, model(x).sum())
    before = [p.detach().clone() for p in model.parameters()]
    model[1].weight.grad[0, 1] = float("nan")
    with pytest.raises(RuntimeError, match=re.escape("parameter 2 '1.weight' of shape (2, 4) (group 1")):
        opt.step()
    _assert_same(list(model.parameters()), before, f"{info.name}: a raising step moved a parameter")
    assert all(len(opt.state[p]) == 0 for p in model.parameters()), "a raising step created state"
    # without names: the index and the shape
    ps = _wb()
    opt = make_opt(info, [{"params": ps, "nonfinite": "raise"}])
    backward(info, _loss(ps, 0))
    ps[2].grad[0, 0] = float("inf")
    msg = "Non-finite gradient (NaN or inf) in parameter 2 of shape (4, 2)"
    with pytest.raises(RuntimeError, match=re.escape(msg)):
        opt.step()


def test_nonfinite_propagate_is_the_default_and_torchs_behaviour(chained: OptimizerInfo) -> None:
    info = chained
    ps = _wb()
    opt = make_opt(info, ps)
    assert opt.param_groups[0]["nonfinite"] == "propagate"
    backward(info, _loss(ps, 0))
    ps[0].grad[0, 0] = float("nan")
    opt.step()  # no error: the NaN flows on, as with torch.optim
    assert opt.param_groups[0]["nonfinite_skipped"] == 0
    # The NaN reaches the parameters, or (sign-based rules, whose sign of a NaN is 0 here) the
    # state; only a sign-based rule without state (signSGD) keeps no trace of it.
    params_finite = all(torch.isfinite(p).all() for p in ps)
    state = [v for st in opt.state.values() for k, v in st.items()
             if k != "step" and torch.is_tensor(v) and v.is_floating_point()]
    state_finite = all(torch.isfinite(v).all() for v in state)
    assert not params_finite or (info.sign_based and (not state_finite or not state)), (params_finite, state_finite)


def test_nonfinite_value_is_validated(chained: OptimizerInfo) -> None:
    ps = _wb()
    with pytest.raises(ValueError, match=re.escape("Invalid nonfinite: 'ignore' (choose one of 'propagate', 'skip', "
                                                   "'raise')")):
        make_opt(chained, [{"params": ps, "nonfinite": "ignore"}])
    opt = make_opt(chained, ps)
    with pytest.raises(ValueError, match="Invalid nonfinite: 'skp'"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "nonfinite": "skp"})
    opt.param_groups[0]["nonfinite"] = "Skip"  # set by hand after construction: checked at the step
    backward(chained, _loss(ps, 0))
    with pytest.raises(ValueError, match="Invalid nonfinite: 'Skip'"):
        opt.step()

