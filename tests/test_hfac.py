"""The H-Fac family (seed 000) against independent NumPy references and peer libraries.

The references below are written from ALGORITHMS.md section 1 / the seed's Algorithms 1-4
and 6, one plain NumPy loop per algorithm, not from hamopt's transforms. Every test feeds the
same random float64 gradients (independent of the parameters) to hamopt and to the reference
for 50 steps and compares the parameters. Shapes: m < n, m > n, a 4-D tensor (factored as
dim0 x prod(rest)), a 1-D tensor and a 0-d tensor (the documented unfactored fallbacks; for
H-Fac the matrix rule on their 1 x n view, ALGORITHMS.md section 1).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch

import hamopt

SHAPES = [(4, 7), (7, 4), (3, 2, 2, 3), (6,), ()]
STEPS = 50
RTOL, ATOL = 1e-10, 1e-12


@pytest.fixture(autouse=True)
def _batch_as_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the CPU every matrix is its own batch by default; these tests stack same-shape
    matrices as a GPU does, so the batched path is what they compare with the references
    (test_cpu_default_does_not_stack covers the CPU default)."""
    from hamopt.fast import factored

    monkeypatch.setattr(factored, "CPU_STACK_MAX_NUMEL", factored.STACK_MAX_NUMEL)


def bt(b: float, t: int) -> float:
    """Bias-corrected decay b_t = b (1 - b^(t-1)) / (1 - b^t) (seed 000, section 4.1)."""
    return 0.0 if b == 0 else b * (1 - b ** (t - 1)) / (1 - b**t)


def clip(u: np.ndarray, d: float | None) -> np.ndarray:
    if d is None or u.size == 0:
        return u
    rms = np.sqrt(np.mean(u**2))
    return u / max(1.0, rms / d)


# ---------------------------------------------------------------------------- references
# Each reference takes x (the parameter, original shape), a list of gradients, and the
# hyperparameters; it returns the final x. `full=True` forces the unfactored rule.


def _mat(x: np.ndarray) -> np.ndarray:
    return x.reshape(x.shape[0], -1)


def ref_adafactor_m(x, grads, lr, b1, b2, eps, wd, d, full=False):
    shape = x.shape
    fac = x.ndim >= 2 and not full
    x = _mat(x).copy() if fac else x.astype(np.float64).copy()
    M = np.zeros_like(x)
    if fac:
        m, n = x.shape
        r, s = np.zeros(m), np.zeros(n)
    else:
        v = np.zeros_like(x)
    for t, g in enumerate(grads, start=1):
        G = _mat(g) if fac else g
        M = bt(b1, t) * M + (1 - bt(b1, t)) * G
        c = bt(b2, t)
        if fac:
            r = c * r + (1 - c) * ((G**2 + eps) @ np.ones(n))
            s = c * s + (1 - c) * ((G**2 + eps).T @ np.ones(m))
            V = np.outer(r, s) / (np.ones(m) @ r)
        else:
            v = c * v + (1 - c) * (G**2 + eps)
            V = v
        x = x - lr * (clip(M / np.sqrt(V), d) + wd * x)
    return x.reshape(shape)


def ref_signfsgd(x, grads, lr, b, wd, corrected, full=False, phi=np.sign, psi=np.sign):
    """Algorithm 2; ``phi``/``psi`` are the reshapers (grad phi, grad psi), sign by default."""
    shape = x.shape
    fac = x.ndim >= 2 and not full
    x = _mat(x).copy() if fac else x.astype(np.float64).copy()
    if fac:
        m, n = x.shape
        u, v = np.zeros(m), np.zeros(n)
    else:
        M = np.zeros_like(x)
    for g in grads:
        G = _mat(g) if fac else g
        if fac:
            u = b * u + (1 - b) * G @ np.ones(n) / n
            v = b * v + (1 - b) * G.T @ np.ones(m) / m
            ut = u - G @ np.ones(n) / n if corrected else u
            vt = v - G.T @ np.ones(m) / m if corrected else v
            D = phi(b * np.outer(ut, np.ones(n)) + G) + psi(b * np.outer(np.ones(m), vt) + G)
        else:
            # fallback: the full momentum M replaces both u 1^T and 1 v^T
            M = b * M + (1 - b) * G
            Mt = M - G if corrected else M
            D = phi(b * Mt + G) + psi(b * Mt + G)
        x = x - lr * (D + wd * x)
    return x.reshape(shape)


def ref_lionfactor(x, grads, lr, b1, b2, wd, full=False):
    shape = x.shape
    fac = x.ndim >= 2 and not full
    x = _mat(x).copy() if fac else x.astype(np.float64).copy()
    if fac:
        m, n = x.shape
        u, v = np.zeros(m), np.zeros(n)
    else:
        M = np.zeros_like(x)
    for g in grads:
        G = _mat(g) if fac else g
        if fac:
            ut = b1 * u + (1 - b1) * G @ np.ones(n) / n - G @ np.ones(n) / n
            vt = b1 * v + (1 - b1) * G.T @ np.ones(m) / m - G.T @ np.ones(m) / m
            D = np.sign(np.outer(ut, np.ones(n)) + G) + np.sign(np.outer(np.ones(m), vt) + G)
            x = x - lr * (D + wd * x)
            u = b2 * u + (1 - b2) * G @ np.ones(n) / n
            v = b2 * v + (1 - b2) * G.T @ np.ones(m) / m
        else:
            Mt = b1 * M + (1 - b1) * G - G
            x = x - lr * (2 * np.sign(Mt + G) + wd * x)
            M = b2 * M + (1 - b2) * G
    return x.reshape(shape)


def ref_hfac(x, grads, lr, b1, b2, eps, wd, d, corrected, full=False):
    """Algorithm 3. The paper defines no rule for 0-d/1-d tensors: they take the matrix rule on
    their ``1 x n`` view (m = 1, ALGORITHMS.md section 1); ``full=True`` (a ``factored=False``
    group) is the documented full-moment rule."""
    shape = x.shape
    fac = not full
    view = _mat if x.ndim >= 2 else (lambda a: np.reshape(a, (1, -1)))
    x = view(x).copy() if fac else x.astype(np.float64).copy()
    if fac:
        m, n = x.shape
        u, v, r, s = np.zeros(m), np.zeros(n), np.zeros(m), np.zeros(n)
        one_m, one_n = np.ones(m), np.ones(n)
    else:
        M, W = np.zeros_like(x), np.zeros_like(x)
    for t, g in enumerate(grads, start=1):
        G = view(g) if fac else g
        c1, c2 = bt(b1, t), bt(b2, t)
        if fac:
            u = c1 * u + (1 - c1) * G @ one_n / n
            v = c1 * v + (1 - c1) * G.T @ one_m / m
            r = c2 * r + (1 - c2) * ((G**2 + eps) @ one_n)
            s = c2 * s + (1 - c2) * ((G**2 + eps).T @ one_m)
            V = np.outer(r, s) / (one_m @ r)
            cu = np.outer(G @ one_n, one_n) / n if corrected else 0.0
            cv = np.outer(one_m, one_m) @ G / m if corrected else 0.0
            phi = c1 * (np.outer(u, one_n) - cu) / np.sqrt(np.outer(r, one_n) / n)
            psi = c1 * (np.outer(one_m, v) - cv) / np.sqrt(np.outer(one_m, s) / m)
            D = 0.5 * (phi + psi) + clip(G / np.sqrt(V), d)
        else:
            # fallback: full M replaces u 1^T and 1 v^T; full W replaces r 1^T/n, 1 s^T/m and V
            M = c1 * M + (1 - c1) * G
            W = c2 * W + (1 - c2) * (G**2 + eps)
            Mt = M - G if corrected else M
            D = c1 * Mt / np.sqrt(W) + clip(G / np.sqrt(W), d)
        x = x - lr * (D + wd * x)
    return x.reshape(shape)


def ref_adamw_variant(x, grads, lr, b1, b2, eps, wd):
    x = x.astype(np.float64).copy()
    M, V = np.zeros_like(x), np.zeros_like(x)
    for t, G in enumerate(grads, start=1):
        c1, c2 = bt(b1, t), bt(b2, t)
        V = c2 * V + (1 - c2) * G**2
        M = c1 * M + (1 - c1) * G / (np.sqrt(V) + eps)
        x = x - lr * (M + wd * x)
    return x


# ---------------------------------------------------------------------------- harness


def _data(seed: int = 0) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal(s) for s in SHAPES]
    grads = [[rng.standard_normal(s) * (1 + 0.5 * rng.standard_normal()) for _ in range(STEPS)] for s in SHAPES]
    return xs, grads


def _run(cls: Any, xs: list[np.ndarray], grads: list[list[np.ndarray]], groups: list[dict] | None = None,
         **kw: Any) -> list[np.ndarray]:
    ps = [torch.nn.Parameter(torch.tensor(x, dtype=torch.float64)) for x in xs]
    params: Any = ps if groups is None else [{**g, "params": [ps[i] for i in g["params"]]} for g in groups]
    opt = cls(params, **kw)
    for k in range(STEPS):
        for p, gs in zip(ps, grads):
            p.grad = torch.tensor(gs[k], dtype=torch.float64)
        opt.step()
    return [p.detach().numpy() for p in ps]


def _check(out: list[np.ndarray], ref: Any, xs: list[np.ndarray], grads: list[list[np.ndarray]]) -> None:
    for i, (o, x, g) in enumerate(zip(out, xs, grads)):
        expected = ref(i, x, g)
        assert not np.allclose(expected, x), "the reference must move the parameter"
        np.testing.assert_allclose(o, expected, rtol=RTOL, atol=ATOL, err_msg=f"shape {SHAPES[i]}")


WD = [0.0, 0.1]


@pytest.mark.parametrize("wd", WD)
@pytest.mark.parametrize("b1", [0.9, 0.0])
def test_adafactor_m_matches_reference(wd: float, b1: float) -> None:
    xs, grads = _data(1)
    kw = dict(lr=0.02, betas=(b1, 0.99), eps=1e-30, weight_decay=wd, clip_threshold=1.0)
    out = _run(hamopt.AdafactorM, xs, grads, **kw)
    _check(out, lambda i, x, g: ref_adafactor_m(x, g, 0.02, b1, 0.99, 1e-30, wd, 1.0), xs, grads)


@pytest.mark.parametrize("wd", WD)
@pytest.mark.parametrize("corrected", [True, False])
def test_signfsgd_matches_reference(wd: float, corrected: bool) -> None:
    xs, grads = _data(2)
    out = _run(hamopt.SignFSGD, xs, grads, lr=0.01, beta=0.9, weight_decay=wd, corrected=corrected)
    _check(out, lambda i, x, g: ref_signfsgd(x, g, 0.01, 0.9, wd, corrected), xs, grads)


@pytest.mark.parametrize("wd", WD)
def test_lionfactor_matches_reference(wd: float) -> None:
    xs, grads = _data(3)
    out = _run(hamopt.LionFactor, xs, grads, lr=0.01, betas=(0.9, 0.99), weight_decay=wd)
    _check(out, lambda i, x, g: ref_lionfactor(x, g, 0.01, 0.9, 0.99, wd), xs, grads)


@pytest.mark.parametrize("wd", WD)
@pytest.mark.parametrize("corrected", [True, False])
def test_hfac_matches_reference(wd: float, corrected: bool) -> None:
    xs, grads = _data(4)
    out = _run(hamopt.HFac, xs, grads, lr=0.02, betas=(0.9, 0.99), eps=1e-30, weight_decay=wd,
               clip_threshold=1.0, corrected=corrected)
    _check(out, lambda i, x, g: ref_hfac(x, g, 0.02, 0.9, 0.99, 1e-30, wd, 1.0, corrected), xs, grads)


def test_hfac_without_clipping_and_with_default_betas() -> None:
    xs, grads = _data(5)
    out = _run(hamopt.HFac, xs, grads, lr=0.01, clip_threshold=None)
    _check(out, lambda i, x, g: ref_hfac(x, g, 0.01, 0.9, 0.999, 1e-30, 0.0, None, True), xs, grads)


@pytest.mark.parametrize("wd", WD)
def test_adamw_variant_matches_reference(wd: float) -> None:
    xs, grads = _data(6)
    out = _run(hamopt.AdamWVariant, xs, grads, lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=wd)
    _check(out, lambda i, x, g: ref_adamw_variant(x, g, 0.01, 0.9, 0.99, 1e-8, wd), xs, grads)


# ---------------------------------------------------------------------------- fullhead groups

_FULLHEAD_CASES = [
    (hamopt.HFac, dict(lr=0.02, betas=(0.9, 0.99), weight_decay=0.1),
     lambda x, g, full: ref_hfac(x, g, 0.02, 0.9, 0.99, 1e-30, 0.1, 1.0, True, full=full)),
    (hamopt.SignFSGD, dict(lr=0.01, weight_decay=0.1),
     lambda x, g, full: ref_signfsgd(x, g, 0.01, 0.9, 0.1, True, full=full)),
    (hamopt.LionFactor, dict(lr=0.01, weight_decay=0.1),
     lambda x, g, full: ref_lionfactor(x, g, 0.01, 0.9, 0.99, 0.1, full=full)),
    (hamopt.AdafactorM, dict(lr=0.02, betas=(0.9, 0.99), weight_decay=0.1),
     lambda x, g, full: ref_adafactor_m(x, g, 0.02, 0.9, 0.99, 1e-30, 0.1, 1.0, full=full)),
]


@pytest.mark.parametrize("case", _FULLHEAD_CASES, ids=lambda c: c[0].__name__)
def test_fullhead_group_uses_the_unfactored_rule(case: Any) -> None:
    cls, kw, ref = case
    xs, grads = _data(7)
    # params 0 (4x7) and 2 (4-D) in a fullhead group, the others factored as usual
    groups = [{"params": [0, 2], "factored": False}, {"params": [1, 3, 4]}]
    ps_out = _run(cls, xs, grads, groups=groups, **kw)
    for i, (o, x, g) in enumerate(zip(ps_out, xs, grads)):
        np.testing.assert_allclose(o, ref(x, g, i in (0, 2)), rtol=RTOL, atol=ATOL)
    # fullhead keeps a full-size state for the matrix; the factored group does not
    opt = cls([{"params": [torch.nn.Parameter(torch.zeros(4, 7))], "factored": False}], **kw)
    opt.param_groups[0]["params"][0].grad = torch.ones(4, 7)
    opt.step()
    st = opt.state[opt.param_groups[0]["params"][0]]
    assert all(v.shape == (4, 7) for k, v in st.items() if k != "step")


def test_bad_factored_and_corrected_values_are_rejected() -> None:
    p = torch.nn.Parameter(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="Invalid factored: 'no'"):
        hamopt.HFac([{"params": [p], "factored": "no"}])
    with pytest.raises(ValueError, match="Invalid corrected: 1"):
        hamopt.SignFSGD([p], corrected=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Invalid beta: 1\.0"):
        hamopt.SignFSGD([p], beta=1.0)
    with pytest.raises(ValueError, match=r"Invalid beta parameter at index 1: 1\.0"):
        hamopt.LionFactor([p], betas=(0.9, 1.0))


# ---------------------------------------------------------------------------- memory


def test_hfac_memory_is_two_m_plus_n() -> None:
    m, n = 32, 48
    ps = [torch.nn.Parameter(torch.zeros(m, n)), torch.nn.Parameter(torch.zeros(n)),
          torch.nn.Parameter(torch.zeros(()))]
    opt = hamopt.HFac(ps)
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()
    # the vector and the scalar are 1 x n rows: 2(1 + n) and 2(1 + 1) numbers; + three step counters
    assert hamopt.state_bytes(opt) == 4 * (2 * (m + n) + 2 * (1 + n) + 4) + 3 * 4
    assert hamopt.state_bytes(opt) == hamopt.expected_state_bytes("hfac", ps)
    shapes = [{k: tuple(v.shape) for k, v in opt.state[p].items()} for p in ps]
    assert shapes == [{"step": (), "mom_row": (r,), "mom_col": (c,), "v_row": (r,), "v_col": (c,)}
                      for r, c in ((m, n), (1, n), (1, 1))]


def test_adafactor_without_momentum_keeps_no_first_moment() -> None:
    p = torch.nn.Parameter(torch.zeros(5, 6))
    opt = hamopt.AdafactorM([p], betas=(0.0, 0.999))
    p.grad = torch.randn(5, 6)
    opt.step()
    assert set(opt.state[p]) == {"step", "v_row", "v_col"}
    assert hamopt.state_bytes(opt) == 4 * (5 + 6) + 4


# ---------------------------------------------------------------------------- fast == slow


@pytest.mark.parametrize("name", ["adafactor_m", "signfsgd", "lionfactor", "hfac", "adamw_variant"])
def test_foreach_equals_per_tensor_with_groups_and_ablations(name: str) -> None:
    xs, grads = _data(8)
    info = hamopt.get(name)
    extra: dict[str, Any] = {"corrected": False} if "corrected" in info.defaults else {}
    groups = [{"params": [0, 1], "factored": False, **extra}, {"params": [2, 3, 4]}]
    if name == "adamw_variant":
        groups = [{"params": [0, 1]}, {"params": [2, 3, 4]}]
    outs = [_run(info.factory, xs, grads, groups=groups, lr=0.01, foreach=fe) for fe in (True, False)]
    for a, b in zip(*outs):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-15)


# ---------------------------------------------------------------------------- peers
# Adafactor-m with b1 = 0 is Adafactor. The peers differ in conventions:
#  * torch.optim.Adafactor: b2_t = 1 - t^beta2_decay (ours: the bias-corrected b2_t), a
#    relative step alpha = max(eps2, RMS(X)) * min(lr, 1/sqrt(t)) (ours: fixed lr), eps1 as a
#    clamp of V (ours: added to G^2), weight decay X *= 1 - lr*wd with its (small) lr, and it
#    factors the LAST two dims of >2-D tensors (ours: dim0 x prod(rest)).
#  * pytorch_optimizer.AdaFactor: b2_t = min(b2, 1 - t^decay_rate), relative step and
#    parameter scaling by default, momentum (if any) applied AFTER normalization and clipping
#    without bias correction, last-two-dims factoring.
# They coincide for 2-D and 1-D tensors when b2 = 0 (b2_t = 0) and beta2_decay = decay_rate
# = 0 (1 - t^0 = 0): V is then built from the current gradient alone, so the factoring,
# the reconstruction, eps, clipping and decoupled weight decay are all compared. For torch
# we set eps2 = 1e6 and lr_torch = lr / 1e6 (so alpha = lr while lr_torch < 1/sqrt(t)), and
# weight_decay_torch = wd * 1e6 (so its 1 - lr_torch * wd_torch = 1 - lr * wd); our eps = 0.

_PEER_SHAPES = [(4, 7), (7, 4), (6,)]


def _peer_data() -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    rng = np.random.default_rng(9)
    return ([rng.standard_normal(s) for s in _PEER_SHAPES],
            [[rng.standard_normal(s) for _ in range(STEPS)] for s in _PEER_SHAPES])


def _run_peer(opt_fn: Any, xs: list[np.ndarray], grads: list[list[np.ndarray]]) -> list[np.ndarray]:
    ps = [torch.nn.Parameter(torch.tensor(x, dtype=torch.float64)) for x in xs]
    opt = opt_fn(ps)
    for k in range(STEPS):
        for p, gs in zip(ps, grads):
            p.grad = torch.tensor(gs[k], dtype=torch.float64)
        opt.step()
    return [p.detach().numpy() for p in ps]


@pytest.mark.parametrize("wd", WD)
def test_adafactor_without_momentum_equals_torch_adafactor(wd: float) -> None:
    xs, grads = _peer_data()
    lr = 0.01
    ours = _run_peer(lambda ps: hamopt.AdafactorM(ps, lr=lr, betas=(0.0, 0.0), eps=0.0, weight_decay=wd), xs, grads)
    theirs = _run_peer(lambda ps: torch.optim.Adafactor(ps, lr=lr / 1e6, beta2_decay=0.0, eps=(None, 1e6),
                                                        weight_decay=wd * 1e6, foreach=False), xs, grads)
    for a, b, x in zip(ours, theirs, xs):
        assert not np.allclose(a, x)
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("wd", WD)
def test_adafactor_without_momentum_equals_pytorch_optimizer(wd: float) -> None:
    po = pytest.importorskip("pytorch_optimizer")
    xs, grads = _peer_data()
    lr = 0.01
    ours = _run_peer(lambda ps: hamopt.AdafactorM(ps, lr=lr, betas=(0.0, 0.0), eps=1e-30, weight_decay=wd), xs,
                     grads)
    theirs = _run_peer(lambda ps: po.AdaFactor(ps, lr=lr, betas=(None, 0.999), decay_rate=0.0, weight_decay=wd,
                                               weight_decouple=True, relative_step=False, scale_parameter=False,
                                               eps1=1e-30, clip_threshold=1.0, foreach=False), xs, grads)
    for a, b, x in zip(ours, theirs, xs):
        assert not np.allclose(a, x)
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("wd", WD)
def test_lionfactor_vector_fallback_is_twice_lion(wd: float) -> None:
    # For 1-D tensors LionFactor's documented fallback is 2 sign(b1 M + (1 - b1) G): Lion with
    # lr' = 2 lr and weight_decay' = wd / 2 (so lr' wd' = lr wd).
    lion_pytorch = pytest.importorskip("lion_pytorch")
    rng = np.random.default_rng(10)
    xs, grads = [rng.standard_normal(9)], [[rng.standard_normal(9) for _ in range(STEPS)]]
    ours = _run_peer(lambda ps: hamopt.LionFactor(ps, lr=0.01, betas=(0.9, 0.99), weight_decay=wd), xs, grads)
    theirs = _run_peer(lambda ps: lion_pytorch.Lion(ps, lr=0.02, betas=(0.9, 0.99), weight_decay=wd / 2), xs, grads)
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------- batched paths
# With foreach, matrices of one shape (and step count) are batched into k x m x n stacks and
# large ones run alone; these tests feed several matrices of one shape (a 4-D tensor shares
# the 3 x 12 batch of a 2-D one), a zero-size matrix and a parameter that skips steps (so
# its step count lags and it leaves its batch), and compare every path with the references.

_BATCH_SHAPES = [(4, 7), (4, 7), (4, 7), (7, 4), (3, 12), (3, 2, 2, 3), (0, 5), (6,), ()]
_SKIPS = {1: range(10, 20)}  # parameter 1 has no gradient at steps 10..19


def _batch_data(seed: int) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal(s) for s in _BATCH_SHAPES]
    grads = [[rng.standard_normal(s) * (1 + 0.5 * rng.standard_normal()) for _ in range(STEPS)]
             for s in _BATCH_SHAPES]
    return xs, grads


def _run_skips(make: Any, xs: list[np.ndarray], grads: list[list[np.ndarray]]) -> list[np.ndarray]:
    ps = [torch.nn.Parameter(torch.tensor(x, dtype=torch.float64)) for x in xs]
    opt = make(ps)
    for k in range(STEPS):
        for i, (p, gs) in enumerate(zip(ps, grads)):
            p.grad = None if k in _SKIPS.get(i, ()) else torch.tensor(gs[k], dtype=torch.float64)
        opt.step()
    return [p.detach().numpy() for p in ps]


def _live(i: int, g: list[np.ndarray]) -> list[np.ndarray]:
    """The gradients parameter ``i`` actually receives (the reference skips the rest)."""
    return [x for k, x in enumerate(g) if k not in _SKIPS.get(i, ())]


_BATCH_CASES = [
    ("hfac", dict(lr=0.02, betas=(0.9, 0.99), weight_decay=0.1, clip_threshold=1.0),
     lambda x, g: ref_hfac(x, g, 0.02, 0.9, 0.99, 1e-30, 0.1, 1.0, True)),
    ("hfac", dict(lr=0.02, betas=(0.9, 0.99), clip_threshold=0.05, corrected=False),
     lambda x, g: ref_hfac(x, g, 0.02, 0.9, 0.99, 1e-30, 0.0, 0.05, False)),
    ("hfac", dict(lr=0.01, clip_threshold=None),
     lambda x, g: ref_hfac(x, g, 0.01, 0.9, 0.999, 1e-30, 0.0, None, True)),
    ("adafactor_m", dict(lr=0.02, betas=(0.9, 0.99), weight_decay=0.1, clip_threshold=0.5),
     lambda x, g: ref_adafactor_m(x, g, 0.02, 0.9, 0.99, 1e-30, 0.1, 0.5)),
    ("signfsgd", dict(lr=0.01, beta=0.9, weight_decay=0.1),
     lambda x, g: ref_signfsgd(x, g, 0.01, 0.9, 0.1, True)),
    ("lionfactor", dict(lr=0.01, betas=(0.9, 0.99)),
     lambda x, g: ref_lionfactor(x, g, 0.01, 0.9, 0.99, 0.0)),
]


@pytest.mark.parametrize("stack_max", [None, 0])
@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("case", _BATCH_CASES, ids=lambda c: f"{c[0]}-{sorted(c[1].items())}")
def test_batched_and_single_paths_match_reference(case: Any, foreach: bool, stack_max: int | None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from hamopt.fast import factored

    if stack_max is not None:  # every matrix alone (the large-matrix path)
        monkeypatch.setattr(factored, "STACK_MAX_NUMEL", stack_max)
    name, kw, ref = case
    xs, grads = _batch_data(11)
    out = _run_skips(lambda ps: hamopt.get(name).factory(ps, foreach=foreach, **kw), xs, grads)
    for i, (o, x, g) in enumerate(zip(out, xs, grads)):
        if x.size == 0:  # the zero-size matrix only has to pass through
            assert o.shape == x.shape
            continue
        expected = ref(x, _live(i, g))
        assert not np.allclose(expected, x)
        np.testing.assert_allclose(o, expected, rtol=RTOL, atol=ATOL, err_msg=f"param {i} {_BATCH_SHAPES[i]}")


@pytest.mark.parametrize("case", _BATCH_CASES, ids=lambda c: f"{c[0]}-{sorted(c[1].items())}")
def test_reference_rules_match_reference(case: Any) -> None:
    # The transforms' own update (hamopt.fast off): the per-tensor rule, against NumPy too.
    from hamopt.fast import reference_only

    with reference_only():
        _check_batch_case(case)


def _hfac_chain(params: Any, foreach: bool, fused: bool, momentum_first: bool = False, legacy: bool = False,
                **kw: Any) -> Any:
    """H-Fac as ``scale_by_hfac`` with its ``factored_momentum``, or as the three transforms it
    stands for (same state keys, so checkpoints move between the two). ``legacy``: the 0.1
    composition, ``factored_momentum`` as a transform of its own before the others."""
    from hamopt.core.optimizer import ChainedOptimizer
    from hamopt.transforms import (
        add_decayed_weights,
        add_normalized_factored_momentum,
        clip_by_rms,
        factored_momentum,
        scale_by_ema,
        scale_by_factored_rms,
        scale_by_hfac,
        scale_by_learning_rate,
    )

    d = dict(lr=0.02, betas=(0.9, 0.99), eps=1e-30, weight_decay=0.1, clip_threshold=0.2, corrected=True)
    d.update(kw)
    head = [scale_by_ema(key="m", corrected=True)] if momentum_first else []
    rows = True  # vectors and scalars on their 1 x n view, as HFac runs them
    mom = None if legacy else factored_momentum(vectors_as_rows=rows)
    middle = ([scale_by_hfac(0.5, vectors_as_rows=rows, momentum=mom)] if fused
              else [scale_by_factored_rms(vectors_as_rows=rows), clip_by_rms(),
                    add_normalized_factored_momentum(0.5, momentum=mom)])
    if legacy:
        middle.insert(0, factored_momentum(vectors_as_rows=rows))
    return ChainedOptimizer(params, d, [*head, *middle, add_decayed_weights(), scale_by_learning_rate()],
                            foreach=foreach)


@pytest.mark.parametrize("momentum_first", [False, True])
@pytest.mark.parametrize("clip", [0.2, 1.0, None])
@pytest.mark.parametrize("foreach", [True, False])
def test_scale_by_hfac_equals_the_composed_transforms(foreach: bool, clip: float | None,
                                                      momentum_first: bool) -> None:
    # momentum_first: the updates reaching scale_by_hfac are not the gradients (composed fallback)
    xs, grads = _batch_data(12)
    a = _run_skips(lambda ps: _hfac_chain(ps, foreach, True, momentum_first, clip_threshold=clip), xs, grads)
    b = _run_skips(lambda ps: _hfac_chain(ps, foreach, False, momentum_first, clip_threshold=clip), xs, grads)
    for i, (u, v, x) in enumerate(zip(a, b, xs)):
        if x.size:
            assert not np.allclose(u, x)
        np.testing.assert_allclose(u, v, rtol=1e-11, atol=1e-13, err_msg=f"param {i}")


@pytest.mark.parametrize("fused", [True, False])
def test_the_old_composition_with_a_standalone_factored_momentum_still_works(fused: bool) -> None:
    # 0.1's chain(factored_momentum(), scale_by_hfac()) (the terms handed on through
    # a side channel once; now chain() gives it to the reshaper): deprecated, and the same rule.
    xs, grads = _batch_data(12)
    with pytest.warns(DeprecationWarning, match="factored_momentum"):
        a = _run_skips(lambda ps: _hfac_chain(ps, True, fused, legacy=True), xs, grads)
    b = _run_skips(lambda ps: _hfac_chain(ps, True, fused), xs, grads)
    for i, (u, v) in enumerate(zip(a, b)):
        np.testing.assert_allclose(u, v, rtol=1e-11, atol=1e-13, err_msg=f"param {i}")


def test_the_old_composition_is_rewired_when_the_chain_is_built() -> None:
    # No side channel: chain() gives the standalone first moment to the reshaper after it,
    # which then owns it (state keys, hyperparameters), and drops it from the members.
    from hamopt.transforms import add_normalized_factored_momentum as add_nfm
    from hamopt.transforms import chain, clip_by_rms, factored_momentum, scale_by_factored_rms, scale_by_hfac

    mom = factored_momentum()
    with pytest.warns(DeprecationWarning, match="pass the momentum to the reshaper"):
        c = chain(mom, scale_by_factored_rms(), clip_by_rms(), add_nfm(0.5))
    assert mom not in c.transforms and len(c.transforms) == 3
    assert c.transforms[-1].momentum is mom
    assert set(mom.state_keys) <= set(c.state_keys)
    own = scale_by_hfac(momentum=factored_momentum())  # one that owns its moment takes nothing:
    with pytest.raises(ValueError, match="State key 'mom_row' is used by both"):  # two first moments
        chain(factored_momentum(), own)


def test_a_reshaper_without_its_first_moment_is_a_clear_error() -> None:
    from hamopt.core.optimizer import ChainedOptimizer
    from hamopt.transforms import scale_by_factored_sign, scale_by_learning_rate

    p = torch.nn.Parameter(torch.randn(3, 4))
    opt = ChainedOptimizer([p], dict(lr=0.1, betas=(0.9, 0.99)), [scale_by_factored_sign(), scale_by_learning_rate()])
    p.grad = torch.randn(3, 4)
    with pytest.raises(RuntimeError, match=r"needs its first moment: pass momentum=factored_momentum"):
        opt.step()


def test_a_standalone_first_moment_keeps_its_state_and_changes_no_update() -> None:
    from hamopt.core.optimizer import ChainedOptimizer
    from hamopt.transforms import factored_momentum, scale_by_learning_rate

    p = torch.nn.Parameter(torch.zeros(3, 4))
    opt = ChainedOptimizer([p], dict(lr=0.5, betas=(0.9, 0.99)), [factored_momentum(), scale_by_learning_rate()])
    g = torch.randn(3, 4)
    p.grad = g.clone()
    with pytest.warns(DeprecationWarning, match="changes no update"):
        opt.step()
    torch.testing.assert_close(p.detach(), -0.5 * g)  # the gradient step, nothing else
    # one step of u = b_t u + (1 - b_t) g_r from zero, with b_1 = 0 (the bias-corrected decay)
    torch.testing.assert_close(opt.state[p]["mom_row"], g.mean(dim=1))


def test_scale_by_hfac_state_loads_into_the_composed_chain() -> None:
    # same state keys: a checkpoint of HFac resumes in the composed chain and vice versa
    xs, grads = _batch_data(13)
    ps = [torch.nn.Parameter(torch.tensor(x, dtype=torch.float64)) for x in xs]
    fused = _hfac_chain(ps, True, fused=True)
    for k in range(5):
        for p, gs in zip(ps, grads):
            p.grad = torch.tensor(gs[k], dtype=torch.float64)
        fused.step()
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    composed = _hfac_chain(qs, True, fused=False)
    composed.load_state_dict(copy.deepcopy(fused.state_dict()))  # not shared tensors
    for k in range(5, 10):
        for p, q, gs in zip(ps, qs, grads):
            p.grad = torch.tensor(gs[k], dtype=torch.float64)
            q.grad = p.grad.clone()
        fused.step()
        composed.step()
    for p, q in zip(ps, qs):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-11, atol=1e-13)


def test_scale_by_hfac_without_momentum_needs_factored_momentum_and_checks_clip_threshold() -> None:
    from hamopt.core.optimizer import ChainedOptimizer
    from hamopt.transforms import scale_by_hfac

    p = torch.nn.Parameter(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="Invalid clip_threshold"):
        ChainedOptimizer([p], dict(betas=(0.9, 0.99), eps=1e-30, clip_threshold=-1.0), [scale_by_hfac()])
    opt = ChainedOptimizer([p], dict(betas=(0.9, 0.99), eps=1e-30, clip_threshold=1.0), [scale_by_hfac()])
    p.grad = torch.ones(3, 4)
    with pytest.raises(RuntimeError, match="factored_momentum"):
        opt.step()


@pytest.mark.parametrize("fused", [True, False])
def test_vector_layouts_of_momentum_and_second_moment_must_agree(fused: bool) -> None:
    from hamopt.core.optimizer import ChainedOptimizer
    from hamopt.transforms import (
        add_normalized_factored_momentum,
        factored_momentum,
        scale_by_factored_rms,
        scale_by_hfac,
    )

    v = torch.nn.Parameter(torch.zeros(5))
    d = dict(betas=(0.9, 0.99), eps=1e-30, clip_threshold=1.0, corrected=True)
    mom = factored_momentum(vectors_as_rows=True)
    second = ([scale_by_hfac(momentum=mom)] if fused
              else [scale_by_factored_rms(), add_normalized_factored_momentum(momentum=mom)])
    opt = ChainedOptimizer([v], d, second)
    v.grad = torch.ones(5)
    with pytest.raises(RuntimeError, match="vectors_as_rows"):
        opt.step()


def test_hfac_vector_is_the_one_row_matrix() -> None:
    # The 1 x n view: a vector follows exactly the trajectory of the same numbers as a 1 x n matrix.
    rng = np.random.default_rng(17)
    x0, gs = rng.standard_normal(9), [rng.standard_normal(9) for _ in range(STEPS)]
    vec = torch.nn.Parameter(torch.tensor(x0))
    row = torch.nn.Parameter(torch.tensor(x0).reshape(1, 9).clone())
    opts = [hamopt.HFac([p], lr=0.05, betas=(0.9, 0.99), weight_decay=0.1) for p in (vec, row)]
    for g in gs:
        for p, opt in zip((vec, row), opts):
            p.grad = torch.tensor(g).reshape(p.shape)
            opt.step()
    assert not np.allclose(vec.detach().numpy(), x0)
    np.testing.assert_array_equal(vec.detach().numpy(), row.detach().numpy().reshape(9))


def _adafactor_chain(params: Any, foreach: bool, fused: bool, momentum: bool, clip: float | None) -> Any:
    from hamopt.core.optimizer import ChainedOptimizer
    from hamopt.transforms import (
        add_decayed_weights,
        clip_by_rms,
        scale_by_clipped_factored_rms,
        scale_by_ema,
        scale_by_factored_rms,
        scale_by_learning_rate,
    )

    head = [scale_by_ema(corrected=True)] if momentum else []
    body = [scale_by_clipped_factored_rms()] if fused else [scale_by_factored_rms(), clip_by_rms()]
    d = dict(lr=0.02, betas=(0.9, 0.99), eps=1e-30, weight_decay=0.1, clip_threshold=clip)
    return ChainedOptimizer(params, d, [*head, *body, add_decayed_weights(), scale_by_learning_rate()],
                            foreach=foreach)


@pytest.mark.parametrize("momentum", [True, False])  # True: updates are the EMA, False: the gradients
@pytest.mark.parametrize("clip", [0.3, 1.0, None])
@pytest.mark.parametrize("foreach", [True, False])
def test_scale_by_clipped_factored_rms_equals_the_composed_transforms(foreach: bool, clip: float | None,
                                                                      momentum: bool) -> None:
    xs, grads = _batch_data(14)
    a = _run_skips(lambda ps: _adafactor_chain(ps, foreach, True, momentum, clip), xs, grads)
    b = _run_skips(lambda ps: _adafactor_chain(ps, foreach, False, momentum, clip), xs, grads)
    for i, (u, v, x) in enumerate(zip(a, b, xs)):
        if x.size:
            assert not np.allclose(u, x)
        np.testing.assert_allclose(u, v, rtol=1e-11, atol=1e-13, err_msg=f"param {i}")


@pytest.mark.parametrize("blocks", [False, True], ids=["whole", "row-blocks"])
@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("reshapers", [("identity", "tanh"), ("tanh", "sign"), ("identity", "identity")])
def test_phi_psi_reshapers_match_reference(reshapers: tuple[str, str], foreach: bool, blocks: bool,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from hamopt.core.optimizer import ChainedOptimizer
    from hamopt.fast import factored
    from hamopt.transforms import factored_momentum, scale_by_factored_phi_psi, scale_by_learning_rate

    if blocks:
        monkeypatch.setattr(factored, "CPU_BLOCK_NUMEL", 8)

    ours = {"identity": "identity", "sign": "sign", "tanh": torch.tanh}
    theirs = {"identity": lambda z: z, "sign": np.sign, "tanh": np.tanh}
    phi, psi = reshapers
    xs, grads = _batch_data(15)
    out = _run_skips(lambda ps: ChainedOptimizer(
        ps, dict(lr=0.01, beta=0.9),
        [scale_by_factored_phi_psi(ours[phi], ours[psi], momentum=factored_momentum(
            hp="beta", index=None, corrected_decay=False, scale_by_beta=True)),
         scale_by_learning_rate()], foreach=foreach), xs, grads)
    for i, (o, x, g) in enumerate(zip(out, xs, grads)):
        if x.size == 0:
            assert o.shape == x.shape
            continue
        expected = ref_signfsgd(x, _live(i, g), 0.01, 0.9, 0.0, True, phi=theirs[phi], psi=theirs[psi])
        assert not np.allclose(expected, x)
        np.testing.assert_allclose(o, expected, rtol=RTOL, atol=ATOL, err_msg=f"param {i}")


def _check_batch_case(case: Any) -> None:
    name, kw, ref = case
    xs, grads = _batch_data(16)
    out = _run_skips(lambda ps: hamopt.get(name).factory(ps, **kw), xs, grads)
    for i, (o, x, g) in enumerate(zip(out, xs, grads)):
        if x.size:
            np.testing.assert_allclose(o, ref(x, _live(i, g)), rtol=RTOL, atol=ATOL, err_msg=f"param {i}")


@pytest.mark.parametrize("case", _BATCH_CASES[:4], ids=lambda c: f"{c[0]}-{sorted(c[1].items())}")
def test_accelerator_reduction_branch_matches_reference(case: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # On CUDA the row and column sums are plain sums (exact under TF32), on the CPU products
    # with a vector; run the accelerator branch here so both are checked against the reference.
    from hamopt.core import reductions

    monkeypatch.setattr(reductions, "reduce_by_matmul", lambda x: False)
    _check_batch_case(case)


@pytest.mark.parametrize("stack", [True, False], ids=["stacked", "single"])
@pytest.mark.parametrize("case", [c for c in _BATCH_CASES if c[0] in ("signfsgd", "lionfactor")],
                         ids=lambda c: f"{c[0]}-{sorted(c[1].items())}")
def test_cpu_row_blocks_match_reference(case: Any, stack: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # On the CPU the sign reshapers work on large matrices in blocks of rows; a block size of
    # 8 entries cuts every matrix here into blocks of one or two rows.
    from hamopt.fast import factored

    monkeypatch.setattr(factored, "CPU_BLOCK_NUMEL", 8)
    if not stack:
        monkeypatch.setattr(factored, "CPU_STACK_MAX_NUMEL", 0)
    assert factored._row_blocks(torch.zeros(4, 7)) is not None
    _check_batch_case(case)


def test_cpu_default_does_not_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the CPU default no gradient stack is made, and the result equals the batched run."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from hamopt.fast import factored

    class Calls(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            self.names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    xs, grads = _batch_data(5)
    batched = _run_skips(lambda ps: hamopt.HFac(ps, lr=0.01, weight_decay=0.1), xs, grads)
    monkeypatch.setattr(factored, "CPU_STACK_MAX_NUMEL", 0)
    single = _run_skips(lambda ps: hamopt.HFac(ps, lr=0.01, weight_decay=0.1), xs, grads)
    for a, b in zip(batched, single):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    ps = [torch.nn.Parameter(torch.randn(8, 6, dtype=torch.float64)) for _ in range(3)]
    opt = hamopt.HFac(ps)
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()
    with Calls() as calls:
        opt.step()
    assert "stack" not in calls.names and "cat" not in calls.names
    monkeypatch.setattr(factored, "CPU_STACK_MAX_NUMEL", factored.STACK_MAX_NUMEL)
    with Calls() as calls:
        opt.step()
    assert "stack" in calls.names or "cat" in calls.names  # the same-shape matrices are batched
