"""The generic battery: every registered optimizer, the same checks (STYLE.md habit 5).

Registering an optimizer is enough to be tested here: convergence on a quadratic over a
matrix and a vector and on a (mild) Rosenbrock valley, checkpoints that resume bit-for-bit,
parameter groups, None gradients, parameters frozen then unfrozen, odd shapes, dtypes,
closures, ``p.grad`` untouched, ``maximize``, LR schedulers, the table of bad
hyperparameters, foreach == per-tensor, ``torch.compile`` == eager, and the memory formula
against the real state.
"""

from __future__ import annotations

import copy
import io
import math
import re
from typing import Any

import pytest
import torch

import hamopt
from conftest import Quadratic, backward, make_opt, run_steps
from hamopt.registry import OptimizerInfo

# ---------------------------------------------------------------------------- convergence


def test_quadratic_converges(info: OptimizerInfo) -> None:
    prob = Quadratic([(6, 10), (10,)], seed=0, scale=0.5)
    ps = prob.params()
    opt = make_opt(info, ps)
    losses = run_steps(info, opt, lambda: prob.loss(ps), 400)
    assert all(math.isfinite(x) for x in losses), f"{info.name} produced a non-finite loss"
    assert losses[-1] < 0.1 * losses[0], f"{info.name}: {losses[0]:.4g} -> {losses[-1]:.4g} in 400 steps"


def _rosenbrock(p: torch.Tensor) -> torch.Tensor:
    # A banana valley with b = 5 (instead of 100) so one learning rate per optimizer serves both toys.
    x, y = p[0], p[1]
    return (1 - x) ** 2 + 5.0 * (y - x**2) ** 2


def test_rosenbrock_converges(info: OptimizerInfo) -> None:
    p = torch.nn.Parameter(torch.tensor([-1.5, 2.0]))
    opt = make_opt(info, [p])
    losses = run_steps(info, opt, lambda: _rosenbrock(p), 1500)
    final = float(_rosenbrock(p.detach()))
    assert math.isfinite(final)
    assert final < 0.05 * losses[0], f"{info.name}: {losses[0]:.4g} -> {final:.4g}"


# ---------------------------------------------------------------------------- checkpoints


def _model_params(seed: int = 0, dtype: torch.dtype = torch.float32) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(5, 7), (7,), (3, 2, 2, 2), ()]
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in shapes]


_PROBLEM = Quadratic([(5, 7), (7,), (3, 2, 2, 2), ()], seed=3)


def _noisy_loss(ps: list[torch.Tensor], step: int) -> torch.Tensor:
    # Deterministic but step-dependent gradients, so moments see real variation.
    g = torch.Generator().manual_seed(1000 + step)
    loss = _PROBLEM.loss(ps)
    for p in ps:
        loss = loss + (torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * p).sum().double()
    return loss


def _train(info: OptimizerInfo, opt: torch.optim.Optimizer, ps: list[torch.Tensor], start: int, n: int) -> None:
    for s in range(start, start + n):
        opt.zero_grad(set_to_none=True)
        backward(info, _noisy_loss(ps, s))
        opt.step()
    opt.zero_grad(set_to_none=True)


def test_state_dict_roundtrip_continues_identically(info: OptimizerInfo) -> None:
    ps = _model_params()
    opt = make_opt(info, ps)
    _train(info, opt, ps, 0, 7)
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "params": [p.detach().clone() for p in ps]}, buf)
    _train(info, opt, ps, 7, 8)

    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    ps2 = [torch.nn.Parameter(t) for t in ckpt["params"]]
    opt2 = make_opt(info, ps2)
    opt2.load_state_dict(ckpt["opt"])
    _train(info, opt2, ps2, 7, 8)
    for a, b in zip(ps, ps2):
        assert torch.equal(a, b), f"{info.name}: resumed run differs by {(a - b).abs().max():.3g}"


def test_deepcopy_continues_identically(info: OptimizerInfo) -> None:
    # copy.deepcopy of (parameters, optimizer) together, as a trainer snapshotting itself does.
    ps = _model_params()
    opt = make_opt(info, ps)
    _train(info, opt, ps, 0, 5)
    ps2, opt2 = copy.deepcopy((ps, opt))
    _train(info, opt, ps, 5, 6)
    _train(info, opt2, ps2, 5, 6)
    for a, b in zip(ps, ps2):
        assert torch.equal(a, b), f"{info.name}: deep copy differs by {(a - b).abs().max():.3g}"


def test_param_groups_have_their_own_hyperparameters(info: OptimizerInfo) -> None:
    ps = _model_params()
    opt = make_opt(info, [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.0}])
    assert opt.param_groups[1]["lr"] == 0.0
    assert opt.param_groups[0]["lr"] == (info.test_lr if info.test_lr is not None else info.defaults["lr"])
    before = [p.detach().clone() for p in ps]
    _train(info, opt, ps, 0, 3)
    assert not torch.equal(ps[0], before[0]), "the group with lr > 0 must move"
    for p, b in zip(ps[2:], before[2:]):
        assert torch.equal(p, b), f"{info.name}: a group with lr=0 moved"


def test_lr_scheduler_drives_the_groups(info: OptimizerInfo) -> None:
    ps = _model_params()
    opt = make_opt(info, ps)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    lr0 = opt.param_groups[0]["lr"]
    for s in range(2):
        _train(info, opt, ps, s, 1)
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(lr0 * 0.25)
    assert all(torch.isfinite(p).all() for p in ps)


# ---------------------------------------------------------------------------- edges


def test_none_grads_are_skipped(info: OptimizerInfo) -> None:
    ps = _model_params()
    frozen = ps[1]
    frozen.requires_grad_(False)
    before = frozen.detach().clone()
    opt = make_opt(info, ps)
    _train(info, opt, [ps[0], frozen, *ps[2:]], 0, 3)
    assert torch.equal(frozen, before)
    if isinstance(opt, hamopt.ChainedOptimizer):
        assert len(opt.state[frozen]) == 0, "no state for a parameter that never had a gradient"


def test_frozen_then_unfrozen(info: OptimizerInfo) -> None:
    ps = _model_params()
    late = ps[0]
    late.requires_grad_(False)
    start = late.detach().clone()
    opt = make_opt(info, ps)
    _train(info, opt, ps, 0, 4)
    assert torch.equal(late, start), "a frozen parameter must not move"
    late.requires_grad_(True)
    _train(info, opt, ps, 4, 4)
    assert not torch.equal(late, start), "an unfrozen parameter must move"
    assert all(torch.isfinite(p).all() for p in ps)
    if isinstance(opt, hamopt.ChainedOptimizer):
        # Per-parameter step counts: the late parameter's trajectory equals a fresh optimizer's.
        solo = torch.nn.Parameter(start.clone())
        opt_solo = make_opt(info, [solo])
        for s in range(4, 8):
            opt_solo.zero_grad(set_to_none=True)
            full = [solo if i == 0 else p.detach() for i, p in enumerate(ps)]
            backward(info, _noisy_loss(full, s))
            opt_solo.step()
        # The loss is separable, so the late parameter's gradients depend only on itself: with
        # per-parameter step counts its trajectory equals a fresh optimizer's on it alone.
        assert torch.equal(late, solo), f"{info.name}: late param differs from a fresh run"
        assert opt.state[late]["step"].item() == 4


@pytest.mark.parametrize(
    "shape",
    [(), (0,), (0, 4), (4, 0), (3, 2, 3, 3), (1, 1), (1, 9), (9, 1)],
    ids=lambda s: "x".join(map(str, s)) or "scalar",
)
def test_shapes(info: OptimizerInfo, shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(shape, generator=g))
    other = torch.nn.Parameter(torch.randn(3, 4, generator=g))
    opt = make_opt(info, [p, other])
    for s in range(3):
        opt.zero_grad(set_to_none=True)
        gen = torch.Generator().manual_seed(s)
        loss = (p * p).sum() * 0.5 + (torch.randn(shape, generator=gen) * p).sum() + (other**2).sum()
        backward(info, loss)
        opt.step()
    assert p.shape == torch.Size(shape)
    assert torch.isfinite(p).all() and torch.isfinite(other).all(), f"{info.name}: non-finite with shape {shape}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_dtype_preserved(info: OptimizerInfo, dtype: torch.dtype) -> None:
    ps = _model_params(dtype=dtype)
    opt = make_opt(info, ps)
    _train(info, opt, ps, 0, 3)
    for p in ps:
        assert p.dtype == dtype
        assert torch.isfinite(p).all()
    if isinstance(opt, hamopt.ChainedOptimizer) and dtype == torch.bfloat16:
        for p in ps:
            for k, v in opt.state[p].items():
                if isinstance(v, torch.Tensor) and v.is_floating_point() and k != "step":
                    assert v.dtype == torch.float32, f"state {k!r} of a bf16 param is {v.dtype}"


def test_closure(info: OptimizerInfo) -> None:
    ps = _model_params()
    ps2 = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt, opt2 = make_opt(info, ps), make_opt(info, ps2)

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = _noisy_loss(ps, 0)
        backward(info, loss)
        return loss

    returned = opt.step(closure)
    assert isinstance(returned, torch.Tensor)
    assert float(returned.detach()) == pytest.approx(float(_noisy_loss(ps2, 0).detach()))
    backward(info, _noisy_loss(ps2, 0))
    opt2.step()
    for a, b in zip(ps, ps2):
        assert torch.equal(a, b)


def test_grad_not_modified(info: OptimizerInfo) -> None:
    ps = _model_params()
    opt = make_opt(info, ps)
    for s in range(3):
        opt.zero_grad(set_to_none=True)
        backward(info, _noisy_loss(ps, s))
        before = [p.grad.detach().clone() for p in ps]
        opt.step()
        for p, g in zip(ps, before):
            assert torch.equal(p.grad.detach(), g), f"{info.name} modified p.grad"


def test_maximize_equals_minimizing_the_negation(info: OptimizerInfo) -> None:
    try:
        make_opt(info, [torch.nn.Parameter(torch.zeros(1))], maximize=True)
    except TypeError:
        pytest.skip(f"{info.name} has no maximize option")
    ps = _model_params()
    ps2 = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt, opt2 = make_opt(info, ps), make_opt(info, ps2, maximize=True)
    for s in range(4):
        opt.zero_grad(set_to_none=True)
        opt2.zero_grad(set_to_none=True)
        backward(info, _noisy_loss(ps, s))
        backward(info, -_noisy_loss(ps2, s))
        opt.step()
        opt2.step()
    for a, b in zip(ps, ps2):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------- validation

_BAD_COMMON: list[tuple[str, Any, str]] = [
    ("lr", -1.0, "Invalid learning rate: -1.0"),
    ("betas", "index0=1.0", "Invalid beta parameter at index 0: 1.0"),
    ("eps", -1.0, "Invalid epsilon value: -1.0"),
    ("weight_decay", -1.0, "Invalid weight_decay value: -1.0"),
]


def _bad_rows(info: OptimizerInfo) -> list[tuple[dict[str, Any], str]]:
    rows: list[tuple[dict[str, Any], str]] = []
    for key, value, msg in _BAD_COMMON:
        if key not in info.defaults:
            continue
        default = info.defaults[key]
        if key == "betas":
            value = (1.0, *tuple(default)[1:])
        elif key == "eps" and not isinstance(default, float):
            continue
        rows.append(({key: value}, msg))
    rows.extend((dict(o), m) for o, m in info.bad_inputs)
    return rows


def test_bad_hyperparameters_rejected(info: OptimizerInfo) -> None:
    rows = _bad_rows(info)
    assert rows, f"{info.name} has no hyperparameter to validate"
    for overrides, msg in rows:
        p = torch.nn.Parameter(torch.zeros(2, 2))
        with pytest.raises(ValueError, match=re.escape(msg)):
            make_opt(info, [p], **overrides)


def test_bad_hyperparameters_rejected_in_added_groups(info: OptimizerInfo) -> None:
    opt = make_opt(info, [torch.nn.Parameter(torch.zeros(2))])
    if not isinstance(opt, hamopt.ChainedOptimizer):
        pytest.skip("torch.optim classes validate only in their constructor")
    if "lr" in info.defaults:
        with pytest.raises(ValueError, match=re.escape("Invalid learning rate: -1.0")):
            opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "lr": -1.0})


# ---------------------------------------------------------------------------- fast == slow


def _chained(info: OptimizerInfo) -> bool:
    return isinstance(make_opt(info, [torch.nn.Parameter(torch.zeros(1))]), hamopt.ChainedOptimizer)


def _all_state(opt: torch.optim.Optimizer, ps: list[torch.Tensor]) -> list[torch.Tensor]:
    out = []
    for p in ps:
        for k in sorted(opt.state[p]):
            v = opt.state[p][k]
            if isinstance(v, torch.Tensor):
                out.append(v)
    return out


def test_foreach_equals_per_tensor_float64(info: OptimizerInfo) -> None:
    if not _chained(info):
        pytest.skip("torch.optim's own foreach/for-loop equality is tested by torch")
    ps = _model_params(dtype=torch.float64)
    ps2 = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt, opt2 = make_opt(info, ps, foreach=True), make_opt(info, ps2, foreach=False)
    _train(info, opt, ps, 0, 6)
    _train(info, opt2, ps2, 0, 6)
    for a, b in zip(ps, ps2):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)
    for a, b in zip(_all_state(opt, ps), _all_state(opt2, ps2)):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cpu_pieces_equal_whole_bucket(info: OptimizerInfo, dtype: torch.dtype) -> None:
    # The CPU runs the step piece by piece (cpu_chunk_numel); a size of 5 cuts these small
    # tensors into flat slices wherever the chain is element-wise, and groups whole tensors
    # otherwise. The parameters and every state tensor must equal one whole-bucket step.
    if not _chained(info):
        pytest.skip("torch.optim classes have no CPU pieces")
    ps = _model_params(dtype=dtype)
    ps2 = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt, opt2 = make_opt(info, ps), make_opt(info, ps2)
    opt.cpu_chunk_numel = 0  # type: ignore[attr-defined]
    opt2.cpu_chunk_numel = 5  # type: ignore[attr-defined]
    _train(info, opt, ps, 0, 6)
    _train(info, opt2, ps2, 0, 6)
    for a, b in zip(ps, ps2):
        assert torch.equal(a, b), f"{info.name}: pieces differ by {(a - b).abs().max():.3g}"
    for a, b in zip(_all_state(opt, ps), _all_state(opt2, ps2)):
        assert torch.equal(a, b), f"{info.name}: state differs by {(a - b).abs().max():.3g}"


def test_compiled_step_equals_eager(info: OptimizerInfo) -> None:
    if not info.supports_compile:
        pytest.skip(f"{info.name} declares supports_compile=False")
    torch._dynamo.reset()
    ps = _model_params()
    ps2 = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt, opt2 = make_opt(info, ps), make_opt(info, ps2)
    compiled = torch.compile(opt2.step, backend="aot_eager")
    for s in range(3):
        for o, q in ((opt, ps), (opt2, ps2)):
            o.zero_grad(set_to_none=True)
            backward(info, _noisy_loss(q, s))
        opt.step()
        compiled()
    for a, b in zip(ps, ps2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- memory

_MEM_SHAPES = [(6, 10), (10, 6), (10,), (), (3, 2, 3, 3), (0, 4), (32, 8)]


def test_state_bytes_match_registry_formula(info: OptimizerInfo) -> None:
    g = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in _MEM_SHAPES]
    opt = make_opt(info, ps)
    opt.zero_grad(set_to_none=True)
    backward(info, sum((p**2).sum() for p in ps))
    opt.step()
    measured = hamopt.state_bytes(opt)
    expected = hamopt.expected_state_bytes(info, ps)
    per_shape = {s: info.state_bytes_for(s) for s in _MEM_SHAPES}
    assert measured == expected, f"{info.name}: measured {measured} B, formula {expected} B ({per_shape})"


def test_registry_entry_is_complete(info: OptimizerInfo) -> None:
    assert info.paper and info.summary and info.memory
    assert info.family
    assert callable(info.factory)
    # the formula is a function of the shape that gives a non-negative integer
    for s in _MEM_SHAPES:
        assert int(info.state_numel(s)) >= 0
    _ = copy.deepcopy(dict(info.defaults))
