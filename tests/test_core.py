"""The core: transforms against NumPy references, the chain's ownership rules, the shell's edges."""

from __future__ import annotations

import copy
import re
from typing import Any

import numpy as np
import pytest
import torch

import hamopt
from hamopt import ChainedOptimizer, Transform, chain
from hamopt.transforms import (
    add_decayed_weights,
    clip_by_rms,
    scale_by_adam,
    scale_by_ema,
    scale_by_learning_rate,
    scale_by_sign,
)

SHAPES = [(4, 6), (6, 4), (5,), (), (2, 3, 2, 2)]


def _params(dtype: torch.dtype = torch.float64, seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64).to(dtype)) for s in SHAPES]


def _grads(step: int, dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in SHAPES]


def _adamw_like(ps, **kw) -> ChainedOptimizer:  # type: ignore[no-untyped-def]
    shell = {k: kw.pop(k) for k in ("foreach", "maximize", "state_dtype", "nonfinite") if k in kw}
    defaults = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    defaults.update(kw)
    return ChainedOptimizer(
        ps, defaults, chain(scale_by_adam(), add_decayed_weights(), scale_by_learning_rate()), **shell
    )


# ----------------------------------------------------------------- transforms vs NumPy


def test_ema_sign_clip_chain_matches_numpy() -> None:
    """chain(scale_by_ema(corrected), clip_by_rms, add_decayed_weights, lr) vs a NumPy loop."""
    ps = _params()
    opt = ChainedOptimizer(
        ps,
        dict(lr=0.05, betas=(0.8, 0.0), clip_threshold=0.7, weight_decay=0.3),
        chain(scale_by_ema(), clip_by_rms(), add_decayed_weights(), scale_by_learning_rate()),
    )
    x = [p.detach().numpy().copy() for p in ps]
    m = [np.zeros_like(a) for a in x]
    b, d, lr, wd = 0.8, 0.7, 0.05, 0.3
    for t in range(1, 31):
        gs = _grads(t)
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        opt.step()
        bt = b * (1 - b ** (t - 1)) / (1 - b**t)  # bias-corrected decay, seed 000 section 4.1
        for i, g in enumerate(gs):
            gn = g.numpy()
            m[i] = bt * m[i] + (1 - bt) * gn
            rms = np.sqrt(np.mean(m[i] ** 2)) if m[i].size else 0.0
            u = m[i] / max(1.0, rms / d)
            x[i] = x[i] - lr * (u + wd * x[i])
    for p, a in zip(ps, x):
        np.testing.assert_allclose(p.detach().numpy(), a, rtol=1e-12, atol=1e-12)


def test_bias_corrected_decay_equals_usual_correction() -> None:
    """ALGORITHMS.md: the corrected-decay EMA equals m / (1 - b^t) of a plain EMA."""
    ps = _params()
    opt = ChainedOptimizer(ps, dict(lr=1.0, betas=(0.9, 0.0)), chain(scale_by_ema(), scale_by_learning_rate()))
    plain = [np.zeros(s) for s in SHAPES]
    x = [p.detach().numpy().copy() for p in ps]
    for t in range(1, 21):
        gs = _grads(t)
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        opt.step()
        for i, g in enumerate(gs):
            plain[i] = 0.9 * plain[i] + 0.1 * g.numpy()
            x[i] = x[i] - plain[i] / (1 - 0.9**t)
    for p, a in zip(ps, x):
        np.testing.assert_allclose(p.detach().numpy(), a, rtol=1e-10, atol=1e-12)


def test_sign_does_not_touch_the_momentum_buffer() -> None:
    """scale_by_ema returns its state buffer; scale_by_sign must copy before writing."""
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = ChainedOptimizer([p], dict(lr=0.1, betas=(0.5, 0.0)),
                           chain(scale_by_ema(corrected=False), scale_by_sign(), scale_by_learning_rate()))
    p.grad = torch.tensor([0.2, -0.4, 0.0], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(opt.state[p]["exp_avg"], torch.tensor([0.1, -0.2, 0.0], dtype=torch.float64))
    torch.testing.assert_close(p.detach(), torch.tensor([-0.1, 0.1, 0.0], dtype=torch.float64))


def test_identity_chain_does_not_alias_the_gradient() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    opt = ChainedOptimizer([p], dict(lr=0.5, weight_decay=0.0), [add_decayed_weights(), scale_by_learning_rate()])
    p.grad = torch.ones(3)
    opt.step()
    assert torch.equal(p.grad, torch.ones(3))
    assert torch.equal(p.detach(), torch.full((3,), 0.5))


# ----------------------------------------------------------------- the chain


def test_chain_rejects_state_key_clash() -> None:
    with pytest.raises(ValueError, match="State key 'exp_avg' is used by both"):
        chain(scale_by_adam(), scale_by_ema())


def test_chain_flattens_and_rejects_non_transforms() -> None:
    c = chain(chain(scale_by_sign(), clip_by_rms()), scale_by_learning_rate())
    assert len(c.transforms) == 3
    assert c.hyperparams == ("clip_threshold", "lr")
    with pytest.raises(TypeError, match="chain\\(\\) takes Transform objects"):
        chain(scale_by_sign(), lambda g: g)  # type: ignore[arg-type]


# ----------------------------------------------------------------- the shell


def test_sparse_gradient_is_a_clear_error() -> None:
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = _adamw_like(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()


def test_multi_tensor_equals_per_tensor_float64() -> None:
    ps, ps2 = _params(), _params()
    o1, o2 = _adamw_like(ps, foreach=True), _adamw_like(ps2, foreach=False)
    assert o1.param_groups[0]["foreach"] is True and o2.param_groups[0]["foreach"] is False
    for t in range(1, 21):
        for p, p2, g in zip(ps, ps2, _grads(t)):
            p.grad, p2.grad = g.clone(), g.clone()
        o1.step()
        o2.step()
    for a, b in zip(ps, ps2):
        assert torch.equal(a, b)
    for a, b in zip(ps, ps2):
        for k in o1.state[a]:
            assert torch.equal(o1.state[a][k], o2.state[b][k]), k


def test_bf16_keeps_float32_state_and_checkpoint_keeps_it() -> None:
    ps = _params(torch.bfloat16)
    opt = _adamw_like(ps)
    for t in range(1, 4):
        for p, g in zip(ps, _grads(t, torch.bfloat16)):
            p.grad = g
        opt.step()
    assert all(opt.state[p]["exp_avg"].dtype == torch.float32 for p in ps)
    sd = copy.deepcopy(opt.state_dict())
    ps2 = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt2 = _adamw_like(ps2)
    opt2.load_state_dict(sd)
    assert all(opt2.state[p]["exp_avg"].dtype == torch.float32 for p in ps2)
    for a, b in zip(ps, ps2):
        torch.testing.assert_close(opt.state[a]["exp_avg_sq"], opt2.state[b]["exp_avg_sq"], rtol=0, atol=0)


def test_bf16_state_dtype_is_configurable() -> None:
    p = torch.nn.Parameter(torch.randn(4, 4).bfloat16())
    opt = ChainedOptimizer([p], dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
                           chain(scale_by_adam(), scale_by_learning_rate()), state_dtype=torch.bfloat16)
    p.grad = torch.randn(4, 4).bfloat16()
    opt.step()
    assert opt.state[p]["exp_avg"].dtype == torch.bfloat16


def test_bad_state_dtype_is_rejected() -> None:
    with pytest.raises(ValueError, match=re.escape("Invalid state_dtype: torch.int32")):
        ChainedOptimizer([torch.nn.Parameter(torch.zeros(2))], dict(lr=0.1),
                         [scale_by_learning_rate()], state_dtype=torch.int32)


def test_tensor_learning_rate() -> None:
    ps, ps2 = _params(), _params()
    o1, o2 = _adamw_like(ps, lr=torch.tensor(0.01, dtype=torch.float64)), _adamw_like(ps2, lr=0.01)
    for t in range(1, 6):
        for p, p2, g in zip(ps, ps2, _grads(t)):
            p.grad, p2.grad = g.clone(), g.clone()
        o1.step()
        o2.step()
    for a, b in zip(ps, ps2):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)


def test_transform_base_class_is_identity() -> None:
    p = torch.nn.Parameter(torch.ones(2))
    opt = ChainedOptimizer([p], dict(lr=1.0), [Transform(), scale_by_learning_rate()])
    p.grad = torch.tensor([1.0, 2.0])
    opt.step()
    assert torch.equal(p.detach(), torch.tensor([0.0, -1.0]))


def test_hamopt_exports() -> None:
    for name in ("create", "list_optimizers", "state_bytes", "expected_state_bytes", "ChainedOptimizer", "chain"):
        assert hasattr(hamopt, name)


def test_step_counts_follow_each_parameter_and_survive_checkpoints(tmp_path) -> None:
    """Per-parameter step counters (0-d views of one vector per bucket) count only the steps
    a parameter had a gradient, survive a weights_only checkpoint and keep counting after it."""
    torch.manual_seed(0)
    ps = [torch.zeros(3, requires_grad=True) for _ in range(3)]
    opt = hamopt.Lion(ps, lr=0.1)
    pattern = [(0, 1, 2), (0, 2), (0, 2), (1,), (0, 1, 2)]
    for live in pattern:
        for i, p in enumerate(ps):
            p.grad = torch.randn(3) if i in live else None
        opt.step()
    expected = [sum(i in live for live in pattern) for i in range(3)]
    assert [float(opt.state[p]["step"]) for p in ps] == expected
    path = tmp_path / "opt.pt"
    torch.save(opt.state_dict(), path)
    opt2 = hamopt.Lion([torch.zeros(3, requires_grad=True) for _ in range(3)], lr=0.1)
    opt2.load_state_dict(torch.load(path, weights_only=True))
    for p in opt2.param_groups[0]["params"]:
        p.grad = torch.randn(3)
    opt2.step()
    assert [float(opt2.state[p]["step"]) for p in opt2.param_groups[0]["params"]] == [e + 1 for e in expected]
    # the checkpoint written earlier is not changed by stepping after it
    assert [float(v["step"]) for v in torch.load(path, weights_only=True)["state"].values()] == expected
    # a deep copy counts on its own
    opt3 = copy.deepcopy(opt2)
    opt3.step()
    assert float(opt3.state[opt3.param_groups[0]["params"][0]]["step"]) == expected[0] + 2
    assert float(opt2.state[opt2.param_groups[0]["params"][0]]["step"]) == expected[0] + 1


# ----------------------------------------------------------------- CPU pieces


class _Recorder(Transform):
    """Identity that records the shapes of the lists it is given (a real transform)."""

    def __init__(self, splits: str) -> None:
        self.splits = splits
        self.seen: list[list[tuple[int, ...]]] = []

    def update(self, ctx, updates):  # type: ignore[no-untyped-def]
        self.seen.append([tuple(u.shape) for u in updates])
        return updates


def _piece_params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    big = torch.randn(300, 70, generator=g)
    odd = torch.randn(40, 50, generator=g).t()  # a non-contiguous leaf: never sliced
    return [torch.nn.Parameter(t) for t in (big, torch.randn(70, generator=g), odd, torch.randn((), generator=g))]


def test_chain_granularity_is_the_coarsest_member() -> None:
    from hamopt.transforms import BUCKET, ELEMENT, TENSOR

    group = dict(clip_threshold=1.0, weight_decay=0.0, lr=1.0)
    assert chain(scale_by_sign(), add_decayed_weights()).granularity(group) == ELEMENT
    assert chain(scale_by_sign(), clip_by_rms()).granularity(group) == TENSOR
    assert chain(scale_by_sign(), Transform()).granularity(group) == BUCKET  # unknown: never split
    p = [torch.nn.Parameter(torch.zeros(3, 4))]
    kinds = {n: hamopt.create(n, p).transform.granularity(hamopt.create(n, p).param_groups[0])
             for n in ("lion", "grams", "ams", "adamw_variant", "hfac", "cadamw", "adadiag")}
    assert kinds == dict(lion=ELEMENT, grams=ELEMENT, ams=ELEMENT, adamw_variant=ELEMENT, hfac=TENSOR,
                         cadamw=TENSOR, adadiag=TENSOR)
    # a rotation needs its whole matrix, and is never finer than what it wraps
    from hamopt.transforms import scale_by_adam, scale_by_svd_rotation
    assert scale_by_svd_rotation(scale_by_adam()).granularity(group) == TENSOR
    assert scale_by_svd_rotation(chain(scale_by_adam(), Transform())).granularity(group) == BUCKET


@pytest.mark.parametrize("splits", ["element", "tensor", "bucket"])
def test_cpu_pieces_follow_the_granularity(splits: str) -> None:
    rec = _Recorder(splits)
    ps = _piece_params()
    opt = ChainedOptimizer(ps, dict(lr=0.1), [scale_by_sign(), rec, scale_by_learning_rate()])
    opt.cpu_chunk_numel = 4096
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    seen = [s for piece in rec.seen for s in piece]
    if splits == "element":  # the big contiguous tensor in flat slices, the rest whole
        assert seen[:6] == [(4096,)] * 5 + [(21000 - 5 * 4096,)]
        assert seen[6:] == [(70,), (50, 40), ()]
        assert rec.seen[-1] == [(21000 - 5 * 4096,), (70,), (50, 40), ()]  # small pieces grouped
    elif splits == "tensor":
        assert rec.seen == [[(300, 70)], [(70,), (50, 40), ()]]
    else:
        assert rec.seen == [[(300, 70), (70,), (50, 40), ()]]
    opt.cpu_chunk_numel = 0
    rec.seen.clear()
    opt.step()
    assert rec.seen == [[(300, 70), (70,), (50, 40), ()]]


def _step_both(step: int, ps: list, ps2: list, opt: torch.optim.Optimizer, opt2: torch.optim.Optimizer) -> None:
    """The same random gradients for two copies of the parameters, then a step of each optimizer."""
    g = torch.Generator().manual_seed(step)
    for p, p2 in zip(ps, ps2):
        p.grad = torch.randn(p.shape, generator=g)
        p2.grad = p.grad.clone()
    opt.step()
    opt2.step()


@pytest.mark.parametrize("name, kw", [
    ("lion", dict(weight_decay=0.1)),
    ("grams", dict(weight_decay=0.1)),
    ("ams", dict(misaligned_scale=1.0, betas=(0.9, 0.999, 0.5))),
    ("adamw_variant", dict(weight_decay=0.1)),
    ("hfac", dict(weight_decay=0.1)),
    ("cadamw", dict(weight_decay=0.1)),
    ("lion", dict(maximize=True, foreach=False)),
])
def test_cpu_pieces_equal_whole_bucket_steps(name: str, kw: dict) -> None:
    ps, ps2 = _piece_params(), _piece_params()
    opt, opt2 = hamopt.create(name, ps, lr=1e-2, **kw), hamopt.create(name, ps2, lr=1e-2, **kw)
    opt.cpu_chunk_numel = 0
    opt2.cpu_chunk_numel = 4096
    for step in range(12):
        if step == 6 and name == "ams":  # b3 switched on: the sign buffer is created inside a slice
            for o in (opt, opt2):
                o.param_groups[0]["betas"] = (0.9, 0.999, 0.5)
        elif step == 0 and name == "ams":
            for o in (opt, opt2):
                o.param_groups[0]["betas"] = (0.9, 0.999, 0.0)
        _step_both(step, ps, ps2, opt, opt2)
    for p, p2 in zip(ps, ps2):
        assert torch.equal(p, p2)
        assert opt.state[p].keys() == opt2.state[p2].keys()
        for k, v in opt.state[p].items():
            assert torch.equal(v, opt2.state[p2][k]), k
            assert v.shape == opt2.state[p2][k].shape
    if name == "ams":
        assert opt2.state[ps2[0]]["sign_avg"].shape == (300, 70)


def test_cpu_chunk_setting_survives_deepcopy() -> None:
    opt = hamopt.Lion([torch.nn.Parameter(torch.zeros(3))])
    opt.cpu_chunk_numel = 7
    assert copy.deepcopy(opt).cpu_chunk_numel == 7
    assert copy.deepcopy(hamopt.Lion([torch.nn.Parameter(torch.zeros(3))])).cpu_chunk_numel == 1 << 18


def test_take_reuses_a_buffer_given_back_within_the_step_only() -> None:
    from hamopt.core.engine.pieces import StepPool
    from hamopt.core.transform import StepContext

    pool: dict = {}
    a = StepContext(group={}, params=[], grads=[], states=[], steps=[], foreach=True, workspace=StepPool(pool))
    x = a.take(torch.zeros(4, 6))
    assert x.shape == (4, 6) and x.is_contiguous()
    a.workspace.give_back()
    b = StepContext(group={}, params=[], grads=[], states=[], steps=[], foreach=True, workspace=StepPool(pool))
    y = b.take(torch.zeros(2, 12))  # same size: the same memory, in the new shape
    assert y.shape == (2, 12) and y.data_ptr() == x.data_ptr()
    z = b.take(torch.zeros(2, 12))  # the pool is empty again: a new buffer
    assert z.data_ptr() != y.data_ptr()
    assert b.take(torch.zeros(24, dtype=torch.float64)).dtype == torch.float64  # keyed by dtype too
    alone = StepContext(group={}, params=[], grads=[], states=[], steps=[], foreach=True)
    alone.take(torch.zeros(3))
    alone.workspace.give_back()  # no pool (whole-bucket step, GPU): take is empty_like and nothing is kept
    assert not alone.workspace.pooled


@pytest.mark.parametrize("name, takes", [("hfac", 1), ("adafactor_m", 1), ("signfsgd", 1), ("lionfactor", 1),
                                         ("cadamw", 2), ("clion", 1), ("adadiag", 5), ("adafacdiag", 5),
                                         ("adadiag++@1", 7)])
def test_cpu_pieces_reuse_buffers_and_match_whole_bucket(name: str, takes: int,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Four same-shape matrices, one per piece: every piece after the first reuses the update
    # buffer the previous piece gave back (AdaDiag: its rotated gradient, the rounding floor's
    # |x| and mask, the inner Adam's denominator and the rotated-back update). Results must
    # equal the whole-bucket step exactly (there AdaDiag rotates the four with one batched
    # product per side).
    from hamopt.core.engine.pieces import StepPool
    from hamopt.fast import factored

    monkeypatch.setattr(factored, "CPU_BLOCK_NUMEL", 1000)  # the sign reshapers' row blocks too
    reused = []
    take = StepPool.take

    def counting_take(self, like):  # type: ignore[no-untyped-def]
        reused.append(self.reuses(like))
        return take(self, like)

    monkeypatch.setattr(StepPool, "take", counting_take)
    g = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(64, 80, generator=g)) for _ in range(4)]
    ps2 = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    name, _, interval = name.partition("@")  # adadiag++@1: an SVD every step, rotated from step 1
    kw = dict(svd_interval=int(interval)) if interval else {}
    opt, opt2 = hamopt.create(name, ps, lr=1e-2, **kw), hamopt.create(name, ps2, lr=1e-2, **kw)
    opt.cpu_chunk_numel = 0
    opt2.cpu_chunk_numel = 4096
    for step in range(8):
        _step_both(step, ps, ps2, opt, opt2)
    for p, p2 in zip(ps, ps2):
        assert torch.equal(p, p2)
    # per step: the first piece allocates its buffers, the next three reuse them
    assert sum(reused) == 8 * 3 * takes


@pytest.mark.parametrize("kind", ["number", "tensor", "numbers", "equal numbers", "0-d tensors"])
def test_ops_mul_is_fresh_and_the_same_on_both_paths(kind: str) -> None:
    from hamopt.core import ops

    g = torch.Generator().manual_seed(0)
    for xs in ([torch.randn(5, generator=g, dtype=torch.float64), torch.randn(2, 3, generator=g, dtype=torch.float64)],
               [torch.randn((), generator=g, dtype=torch.float64) for _ in range(2)]):
        other: Any = dict(number=1.5, tensor=torch.tensor(0.25, dtype=torch.float64), numbers=[2.0, -3.0],
                          **{"equal numbers": [0.5, 0.5],
                             "0-d tensors": [torch.tensor(v, dtype=torch.float64) for v in (2.0, -0.5)]})[kind]
        expected = [x * (other[i] if isinstance(other, list) else other) for i, x in enumerate(xs)]
        before = [x.clone() for x in xs]
        for foreach in (True, False):
            got = ops.mul(xs, other, foreach)
            for e, r, x, b in zip(expected, got, xs, before):
                assert torch.equal(r, e) and r.data_ptr() != x.data_ptr()
                assert torch.equal(x, b)  # the inputs are untouched


# ----------------------------------------------------------------- step counters in any form, non-finite gradients


@pytest.mark.parametrize("form", ["float", "int", "int64", "float64", "one-element"])
def test_step_set_by_hand_in_any_form_keeps_counting(form: str) -> None:
    """Issue 15 problem 2: a ``step`` that is a Python number (or a tensor of another dtype or
    shape) crashed the next step with ``'float' object has no attribute 'detach'``; it steps
    exactly like the float32 tensor the optimizer writes."""
    ps, ps2 = _params(), _params()
    o1, o2 = _adamw_like(ps), _adamw_like(ps2)
    for t in range(1, 4):
        for p, p2, g in zip(ps, ps2, _grads(t)):
            p.grad, p2.grad = g.clone(), g.clone()
        o1.step()
        o2.step()
    convert = {"float": float, "int": lambda t: int(float(t)), "int64": lambda t: t.to(torch.int64),
               "float64": lambda t: t.to(torch.float64), "one-element": lambda t: t.reshape(1)}[form]
    for p in ps2:
        o2.state[p]["step"] = convert(o2.state[p]["step"])
    for t in range(4, 7):
        for p, p2, g in zip(ps, ps2, _grads(t)):
            p.grad, p2.grad = g.clone(), g.clone()
        o1.step()
        o2.step()
    for a, b in zip(ps, ps2):
        assert torch.equal(a, b)
    assert all(o2.state[p]["step"].dtype == torch.float32 and float(o2.state[p]["step"]) == 6.0 for p in ps2)


class _OpLog(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the names of the aten ops that run (a real dispatch mode, nothing replaced)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ops.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mode", ["propagate", "skip"])
def test_nonfinite_check_runs_only_when_asked(mode: str) -> None:
    """``propagate`` (the default) costs nothing: no finiteness test (``isfinite(g).all()``,
    which reaches the dispatcher as ``all``), no read-back of a flag."""
    ps = _params(torch.float32)
    opt = _adamw_like(ps, nonfinite=mode) if mode != "propagate" else _adamw_like(ps)
    for p, g in zip(ps, _grads(1, torch.float32)):
        p.grad = g
    opt.step()  # lazy state first, then a logged step
    with _OpLog() as log:
        opt.step()
    checks = [op for op in log.ops if op.startswith("all.")]
    assert (len(checks) == 0) == (mode == "propagate"), log.ops


def test_nonfinite_raise_checks_every_group_before_any_steps() -> None:
    """A bad gradient in the last group stops the whole step: the first group does not move."""
    ps = _params()
    opt = ChainedOptimizer([{"params": ps[:2]}, {"params": ps[2:]}],
                           dict(lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
                           chain(scale_by_adam(), scale_by_learning_rate()), nonfinite="raise")
    before = [p.detach().clone() for p in ps]
    for p, g in zip(ps, _grads(1)):
        p.grad = g
    ps[4].grad[1, 2, 0, 1] = float("inf")
    with pytest.raises(RuntimeError, match=re.escape("in parameter 4 of shape (2, 3, 2, 2) (group 1")):
        opt.step()
    for p, b in zip(ps, before):
        assert torch.equal(p, b)
    assert all(len(opt.state[p]) == 0 for p in ps)
    ps[4].grad[1, 2, 0, 1] = 0.0
    opt.step()
    assert all(float(opt.state[p]["step"]) == 1.0 for p in ps)


def test_nonfinite_skip_with_bf16_params_checks_the_raw_gradient() -> None:
    """A bf16 gradient's inf is caught before the cast to the float32 compute dtype."""
    p = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    opt = _adamw_like([p], nonfinite="skip")
    p.grad = torch.tensor([1.0, float("inf"), 0.0, 2.0], dtype=torch.bfloat16)
    opt.step()
    assert torch.equal(p, torch.ones(4, dtype=torch.bfloat16)) and len(opt.state[p]) == 0
    assert opt.param_groups[0]["nonfinite_skipped"] == 1


def test_the_transform_modules_old_names_still_import() -> None:
    # Renamed on 2026-12-08 (one module per idea; the old names were the optimizer modules').
    import importlib
    import pickle

    for old, new in [("transforms.adadiag", "transforms.rotation"), ("transforms.ams", "transforms.masks"),
                     ("transforms.lecture", "transforms.adaptive"), ("transforms.lionk", "transforms.kernels"),
                     ("fast.adadiag", "fast.rotation"), ("fast.ams", "fast.masks"),
                     ("core.sharding", "core.engine.sharding")]:
        assert importlib.import_module(f"hamopt.{old}") is importlib.import_module(f"hamopt.{new}")
    from hamopt.transforms.adadiag import ScaleBySvdRotation
    from hamopt.transforms.lecture import scale_by_sophia  # noqa: F401

    t = pickle.loads(pickle.dumps(ScaleBySvdRotation(hamopt.transforms.scale_by_adam())))
    assert type(t) is ScaleBySvdRotation
