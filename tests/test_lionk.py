"""Lion-K and Lion (seed 004) against independent references and the paper's theory.

References: NumPy formulas of Table 2 for every kernel (gradK, K, K*), a NumPy Lion-K loop for
whole trajectories, ``lion_pytorch`` and ``pytorch_optimizer`` for Lion, and Theorem 4.1 / Figure 1
of the paper for the constraint each kernel enforces.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import hamopt
from hamopt.transforms import make_kernel
from hamopt.transforms.kernels import UserKernel

SHAPES = [(4, 6), (2, 3, 2, 2), (5,), ()]


# ------------------------------------------------------------------ NumPy Table 2
def np_gradk(kernel: str, x: np.ndarray, p=None, e=None, k=None) -> np.ndarray:
    if kernel == "l1":
        return np.sign(x)
    if kernel == "lp":
        n = np.sum(np.abs(x) ** p) ** (1.0 / p) if x.size else 0.0
        return np.sign(x) * np.abs(x) ** (p - 1) / n ** (p - 1) if n > 0 else np.zeros_like(x)
    if kernel == "threshold":
        return np.sign(x) * (np.abs(x) > e)
    if kernel == "topk":
        flat = x.ravel()
        out = np.zeros_like(flat)
        idx = np.argsort(-np.abs(flat), kind="stable")[: min(k, flat.size)]
        out[idx] = np.sign(flat[idx])
        return out.reshape(x.shape)
    if kernel == "huber":
        return np.clip(x, -e, e) / e
    raise AssertionError(kernel)


def np_k(kernel: str, x: np.ndarray, p=None, e=None, k=None) -> float:
    a = np.abs(x.ravel())
    if kernel == "l1":
        return a.sum()
    if kernel == "lp":
        return (a**p).sum() ** (1 / p)
    if kernel == "threshold":
        return np.maximum(a - e, 0).sum()
    if kernel == "topk":
        return np.sort(a)[::-1][:k].sum()
    if kernel == "huber":
        return np.where(a >= e, a - e / 2, a * a / (2 * e)).sum()
    raise AssertionError(kernel)


KERNELS = [("l1", {}), ("lp", {"p": 2.0}), ("lp", {"p": 1.5}), ("lp", {"p": 3.0}), ("threshold", {"e": 0.3}),
           ("topk", {"k": 3}), ("huber", {"e": 0.5})]
IDS = [f"{k}{''.join(f'-{n}{v}' for n, v in kw.items())}" for k, kw in KERNELS]


@pytest.mark.parametrize("kernel,kw", KERNELS, ids=IDS)
@pytest.mark.parametrize("shape", [(7, 5), (3, 2, 2), (9,), (), (0,), (0, 3)], ids=str)
@pytest.mark.parametrize("foreach", [True, False])
def test_gradk_matches_table_2(kernel, kw, shape, foreach):
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(shape) * 0.6, np.zeros(shape)]
    K = make_kernel(kernel, **kw)
    got = K.grad_([torch.tensor(x) for x in xs], foreach)
    for x, g in zip(xs, got):
        assert g.shape == torch.Size(shape)
        np.testing.assert_allclose(g.numpy(), np_gradk(kernel, x, **kw), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("kernel,kw", KERNELS, ids=IDS)
def test_k_and_conjugate_satisfy_fenchel_young(kernel, kw):
    # gradK(x) is a subgradient of K at x iff K(x) + K*(gradK(x)) = <x, gradK(x)>; and K*(y) is
    # +inf outside dom K* (scaled-up y), finite inside.
    rng = np.random.default_rng(1)
    K = make_kernel(kernel, **kw)
    for _ in range(5):
        x = rng.standard_normal((6, 4))
        t = torch.tensor(x)
        y = K.grad(t)
        assert float(K.K(t)) == pytest.approx(np_k(kernel, x, **kw), rel=1e-12)
        lhs = float(K.K(t) + K.K_star(y))
        assert lhs == pytest.approx(float((t * y).sum()), rel=1e-10, abs=1e-12)
        # Fenchel-Young inequality K(z) + K*(y) >= <z, y> for other z
        z = torch.tensor(rng.standard_normal((6, 4)))
        assert float(K.K(z) + K.K_star(y)) >= float((z * y).sum()) - 1e-10
        assert math.isinf(float(K.K_star(3.0 * torch.ones(6, 4, dtype=torch.float64))))


def test_conjugates_written_down():
    y = torch.tensor([0.5, -0.25, 0.0], dtype=torch.float64)
    assert float(make_kernel("l1").K_star(y)) == 0.0
    assert float(make_kernel("threshold", e=0.2).K_star(y)) == pytest.approx(0.2 * 0.75)
    assert float(make_kernel("huber", e=0.4).K_star(y)) == pytest.approx(0.2 * (0.25 + 0.0625))
    assert float(make_kernel("lp", p=2.0).K_star(y)) == 0.0  # ||y||_2 < 1
    assert math.isinf(float(make_kernel("lp", p=1.5).K_star(torch.tensor([0.9, 0.9]))))  # ||y||_3 > 1
    assert float(make_kernel("topk", k=1).K_star(y)) == 0.0  # ||y||_inf <= 1, ||y||_1 = 0.75 <= k
    assert math.isinf(float(make_kernel("topk", k=1).K_star(2 * y)))  # ||2y||_inf = 1 but ||2y||_1 > k


# ------------------------------------------------------------------ whole trajectories
def lionk_reference(grads, w0, lr, b1, b2, wd, gradk):
    out = []
    for i, w in enumerate(w0):
        w = w.copy()
        m = np.zeros_like(w)
        for gs in grads:
            g = gs[i]
            c = b1 * m + (1 - b1) * g
            w = w - lr * (gradk(c) + wd * w)
            m = b2 * m + (1 - b2) * g
        out.append(w)
    return out


def _run(opt_fn, grads, w0):
    ps = [torch.nn.Parameter(torch.tensor(w)) for w in w0]
    opt = opt_fn(ps)
    for gs in grads:
        for p, g in zip(ps, gs):
            p.grad = torch.tensor(g)
        kept = [p.grad.clone() for p in ps]
        opt.step()
        assert all(torch.equal(p.grad, g) for p, g in zip(ps, kept))
    return [p.detach().numpy() for p in ps]


def _data(seed, steps=50, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s) for s in shapes] for _ in range(steps)], [rng.standard_normal(s) for s in shapes]


@pytest.mark.parametrize("kernel,kw", KERNELS, ids=IDS)
@pytest.mark.parametrize("foreach", [True, False])
def test_lionk_trajectory_matches_numpy(kernel, kw, foreach):
    grads, w0 = _data(2)
    lr, betas, wd = 0.02, (0.9, 0.99), 0.3
    ours = _run(lambda ps: hamopt.LionK(ps, lr=lr, betas=betas, weight_decay=wd, kernel=kernel, foreach=foreach,
                                        **kw), grads, w0)
    ref = lionk_reference(grads, w0, lr, *betas, wd, lambda c: np_gradk(kernel, c, **kw))
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)


def test_user_callable_kernel():
    grads, w0 = _data(3)
    ours = _run(lambda ps: hamopt.LionK(ps, lr=0.05, weight_decay=0.1, kernel=torch.tanh), grads, w0)
    ref = lionk_reference(grads, w0, 0.05, 0.9, 0.99, 0.1, np.tanh)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    # a Kernel object with K and K* for the theory tools
    kern = UserKernel(torch.tanh, K=lambda x: torch.log(torch.cosh(x)).sum())
    assert float(kern.K(torch.zeros(3))) == 0.0
    with pytest.raises(NotImplementedError):
        kern.K_star(torch.zeros(3))


def test_lion_is_lionk_with_l1_bit_for_bit():
    grads, w0 = _data(4)
    a = _run(lambda ps: hamopt.Lion(ps, lr=0.01, weight_decay=0.2), grads, w0)
    b = _run(lambda ps: hamopt.LionK(ps, lr=0.01, weight_decay=0.2, kernel="l1"), grads, w0)
    c = _run(lambda ps: hamopt.LionK(ps, lr=0.01, weight_decay=0.2, kernel=torch.sign), grads, w0)
    for x, y, z in zip(a, b, c):
        assert np.array_equal(x, y) and np.array_equal(x, z)


def test_lion_matches_lion_pytorch():
    lp = pytest.importorskip("lion_pytorch")
    grads, w0 = _data(5, steps=100)
    ours = _run(lambda ps: hamopt.Lion(ps, lr=0.01, betas=(0.9, 0.99), weight_decay=0.1), grads, w0)
    theirs = _run(lambda ps: lp.Lion(ps, lr=0.01, betas=(0.9, 0.99), weight_decay=0.1), grads, w0)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("foreach", [True, False])
def test_lion_matches_pytorch_optimizer(foreach):
    po = pytest.importorskip("pytorch_optimizer")
    grads, w0 = _data(6, steps=100)
    ours = _run(lambda ps: hamopt.Lion(ps, lr=0.01, betas=(0.95, 0.98), weight_decay=0.1), grads, w0)
    theirs = _run(lambda ps: po.Lion(ps, lr=0.01, betas=(0.95, 0.98), weight_decay=0.1, foreach=foreach),
                  grads, w0)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


# ------------------------------------------------------------------ the constraint (Theorem 4.1, Figure 1)
def _toy(opt_fn, x0, steps):
    x = torch.nn.Parameter(torch.tensor(x0, dtype=torch.float64))
    opt = opt_fn([x])
    xs = [x.detach().clone()]
    for _ in range(steps):
        opt.zero_grad()
        ((x[0] - 1.5) ** 2 + x[1] ** 2).backward()
        opt.step()
        xs.append(x.detach().clone())
    return torch.stack(xs)


def _box_dist(xs, r):
    return torch.linalg.vector_norm((xs.abs() - r).clamp_min(0), dim=1)


@pytest.mark.parametrize("x0", [(1.45, 6.0), (10.0, -8.0)])
def test_lion_enters_and_stays_in_the_box_at_the_linear_rate(x0):
    lr, wd = 0.01, 1.5
    xs = _toy(lambda p: hamopt.Lion(p, lr=lr, weight_decay=wd), x0, 1500)
    r = 1.0 / wd
    dist = _box_dist(xs, r)
    t = torch.arange(len(xs), dtype=torch.float64)
    # Theorem 4.1 (1): dist(x_t, box) <= (1/(1 + lr wd))^t dist(x_0, box)
    bound = (1.0 / (1.0 + lr * wd)) ** t * dist[0]
    assert torch.all(dist <= bound * (1 + 1e-12) + 1e-15)
    # it ends inside (up to the geometric tail: the minimum of f lies outside, so x1 approaches
    # the face x1 = 1/wd from outside or inside without crossing it), ...
    assert float(dist[-1]) <= 1e-8
    # ... and a coordinate that is inside stays inside (|x| <= (1 - lr wd)|x| + lr <= 1/wd)
    was_in = xs[:-1].abs() <= r
    assert torch.all(xs[1:].abs()[was_in] <= r * (1 + 1e-12))
    if x0[0] < 1.5:
        # x1 in (1/wd, 1.5): the gradient pushes outwards, and the excess decays at exactly the
        # explicit scheme's rate (1 - lr wd)^t, first order equal to the theorem's (1/(1+lr wd))^t.
        e = xs[:, 0] - r
        torch.testing.assert_close(e, (1 - lr * wd) ** t * e[0], rtol=1e-9, atol=1e-12)
    # it ends at the constrained minimum (2/3, 0) of f on the box, up to Lion's O(lr) dither
    assert abs(float(xs[-1, 0]) - r) <= 1e-6 and abs(float(xs[-1, 1])) <= 2 * lr


def test_lion_l2_ends_inside_the_l2_ball():
    lr, wd = 0.01, 1.5
    xs = _toy(lambda p: hamopt.LionK(p, lr=lr, weight_decay=wd, kernel="lp", p=2.0), (3.0, 4.0), 1500)
    norms = torch.linalg.vector_norm(xs, dim=1)
    inside = torch.nonzero(norms <= 1 / wd * (1 + 1e-12)).flatten()
    first = int(inside[0])
    assert torch.all(norms[first:] <= 1 / wd * (1 + 1e-12))
    # ||x_t|| - 1/wd contracts at least like (1/(1 + lr wd))^t until inside
    t = torch.arange(first, dtype=torch.float64)
    assert torch.all(norms[:first] - 1 / wd <= (1 / (1 + lr * wd)) ** t * (norms[0] - 1 / wd) * (1 + 1e-12))
    # the minimum of f on the ball ||x||_2 <= 2/3 is (2/3, 0); and the box's corner is not reached
    torch.testing.assert_close(xs[-1], torch.tensor([1 / wd, 0.0], dtype=torch.float64), atol=2e-3, rtol=0)


def test_lion_with_small_weight_decay_reaches_the_unconstrained_minimum():
    # wd = 0.5: the box ||x||_inf <= 2 contains (1.5, 0), so weight decay does not change the answer.
    lr = 0.01
    xs = _toy(lambda p: hamopt.Lion(p, lr=lr, weight_decay=0.5), (-4.0, 3.0), 3000)
    last = xs[-200:]
    assert torch.all(last.abs().amax(dim=1) <= 2.0)
    assert float((last[:, 0] - 1.5).abs().max()) <= 3 * lr
    assert float(last[:, 1].abs().max()) <= 3 * lr


# ------------------------------------------------------------------ arguments
@pytest.mark.parametrize(
    "kwargs,msg",
    [
        (dict(kernel="lp"), "LionK kernel 'lp' needs p"),
        (dict(kernel="lp", p=0.5), "Invalid p for kernel 'lp': 0.5"),
        (dict(kernel="lp", p=float("inf")), "Invalid p for kernel 'lp': inf"),
        (dict(kernel="threshold"), "LionK kernel 'threshold' needs e"),
        (dict(kernel="threshold", e=0.0), "Invalid e for kernel 'threshold': 0.0"),
        (dict(kernel="huber"), "LionK kernel 'huber' needs e"),
        (dict(kernel="topk"), "LionK kernel 'topk' needs k"),
        (dict(kernel="topk", k=2.5), "Invalid k for kernel 'topk': 2.5"),
        (dict(kernel="topk", k=True), "Invalid k for kernel 'topk': True"),
        (dict(kernel="l2"), "Invalid kernel: 'l2'"),
        (dict(kernel=3), "Invalid kernel: 3"),
        (dict(kernel="l1", e=0.1), "LionK kernel 'l1' takes no e"),
        (dict(kernel="huber", e=0.1, k=3), "LionK kernel 'huber' takes no k"),
        (dict(kernel=torch.sign, p=2.0), "custom kernel takes no p"),
    ],
)
def test_bad_kernel_arguments(kwargs, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(".", r"\.")):
        hamopt.LionK([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_kernel_per_param_group_and_in_state_dict():
    a = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
    b = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
    opt = hamopt.LionK([{"params": [a]}, {"params": [b], "kernel": "huber", "e": 0.5}], lr=0.1)
    c = torch.randn(4, 3, dtype=torch.float64)
    a0, b0 = a.detach().clone(), b.detach().clone()
    a.grad, b.grad = c.clone(), c.clone()
    opt.step()
    torch.testing.assert_close(a.detach(), a0 - 0.1 * torch.sign(0.1 * c), rtol=0, atol=1e-15)
    torch.testing.assert_close(b.detach(), b0 - 0.1 * torch.clamp(0.1 * c, -0.5, 0.5) / 0.5, rtol=0, atol=1e-15)
    assert opt.state_dict()["param_groups"][1]["kernel"] == "huber"
    with pytest.raises(ValueError, match="needs e"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "kernel": "threshold"})
