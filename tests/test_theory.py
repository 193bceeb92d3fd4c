"""hamopt.theory: energies on hand-checked states, dH/dt against autograd, each claim, and
checkers that fail on deliberately wrong energies (THEORY.md sections 1-9)."""

from __future__ import annotations

import math

import pytest
import torch

from hamopt.theory import (
    AdafactorMSystem,
    AdamSystem,
    FactoredSystem,
    GramsSystem,
    HeavyBallSystem,
    HFacSystem,
    LionKDiscreteSystem,
    LionKSystem,
    integrate,
)
from hamopt.theory.claims import (
    Settings,
    check_family,
    check_lionk_constraint,
    check_state,
    family_hfac,
    lionk_discrete_run,
    trajectory_verdict,
)
from hamopt.theory.kernels import (
    conjugate_subgradient,
    constraint_norm,
    gauge_points,
    penalty_points,
    theory_kernels,
)
from hamopt.theory.objectives import get_objective, value_and_grad

D = torch.float64


def t(*rows: list[float] | float) -> torch.Tensor:
    return torch.tensor(rows, dtype=D)


def half_sq(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (x * x).sum()


# ---------------------------------------------------------------------- hand-checked energies
def test_energies_on_hand_checked_states() -> None:
    # heavy ball: f = 1/2 (1 + 4) = 2.5, 1/2 ||M||^2 = 1
    z = {"X": t([1.0, 2.0]), "M": t([1.0, -1.0])}
    assert HeavyBallSystem().energy(z, half_sq).item() == pytest.approx(3.5)
    # Adafactor-m: S = 4, w = 2 / sqrt(4 * [1, 4]) = [1, 0.5]; 1/2 (4 * 1 + 4 * 0.5) = 3
    z = {"X": t([0.0, 0.0]), "M": t([2.0, 2.0]), "r": torch.tensor([4.0], dtype=D),
         "s": torch.tensor([1.0, 4.0], dtype=D)}
    assert AdafactorMSystem().energy(z, half_sq).item() == pytest.approx(3.0)
    # factored, beta = 0.5, m = 1, n = 2: (0.5 * 2 / 2) * 4 + (0.5 * 1 / 2) * 2 = 2.5
    z = {"X": t([0.0, 0.0]), "u": torch.tensor([2.0], dtype=D), "v": torch.tensor([1.0, 1.0], dtype=D)}
    assert FactoredSystem(beta=0.5).energy(z, half_sq).item() == pytest.approx(2.5)
    # H-Fac, 2 x 2, k = 1: c_u = c_v = 2/4; 0.5 (4/2 + 1/1) + 0.5 (1/1 + 4/2) = 3
    z = {"X": t([0.0, 0.0], [0.0, 0.0]), "u": torch.tensor([2.0, 1.0], dtype=D),
         "v": torch.tensor([1.0, 2.0], dtype=D), "r": torch.tensor([4.0, 1.0], dtype=D),
         "s": torch.tensor([1.0, 4.0], dtype=D)}
    assert HFacSystem().energy(z, half_sq).item() == pytest.approx(3.0)
    # ... and twice that kinetic energy with the wrong constants n/2, m/2
    assert HFacSystem(energy_scale=2.0).energy(z, half_sq).item() == pytest.approx(6.0)
    # Adam, a = 2, eps = 0: (1 / 4) * 4 / sqrt(4) = 0.5, plus f = 0.5
    z = {"X": t([1.0]), "M": t([2.0]), "V": t([4.0])}
    assert AdamSystem(a=2.0, c=1.0, eps=0.0).energy(z, half_sq).item() == pytest.approx(1.0)
    # Grams: f = 0 at X = 0, ||s||^2 / 2 = 12.5
    z = {"X": t([0.0, 0.0]), "s": t([3.0, 4.0])}
    assert GramsSystem().energy(z, half_sq).item() == pytest.approx(12.5)
    # Lion-K l1, alpha = gamma = 1, lambda = eps = 0.5: eta = 0.5 / 1.25 = 0.4; f = 0.5,
    # K*(0.5 x) = 0 (inside the box), K(m) = 3, lambda m^T x = 0.5: H = 0.5 + 0.4 * 2.5 = 1.5
    kern = theory_kernels(["l1"])["l1"]
    z = {"X": t([1.0, 0.0]), "m": t([1.0, -2.0])}
    assert LionKSystem(kern, lam=0.5, eps=0.5).energy(z, half_sq).item() == pytest.approx(1.5)
    # outside the domain (lambda x = 1.5 > 1) the energy is infinite
    z = {"X": t([3.0, 0.0]), "m": t([1.0, -2.0])}
    assert math.isinf(LionKSystem(kern, lam=0.5, eps=0.5).energy(z, half_sq).item())


# ---------------------------------------------------------------------- dH/dt against autograd
def _systems() -> list:
    out = [HeavyBallSystem(0.7), AdafactorMSystem(1.3, 0.6), FactoredSystem(0.8, 0.6),
           HFacSystem(0.8, 1.1, 0.4, 1.2), HFacSystem(energy_scale=2.0), AdamSystem(1.5, 0.5, 1e-3),
           AdamSystem(1.0, 1.0, 1e-8, sides=1), AdamSystem(1.0, 2.0, 1e-8, sides=2),
           AdamSystem(1.0, 1.0, direction="grams"), GramsSystem("grams", 0.5), GramsSystem("cautious", 0.5)]
    out += [LionKSystem(k, alpha=1.2, gamma=0.8, lam=0.5, eps=0.4) for k in theory_kernels().values()]
    return out


@pytest.mark.parametrize("system", _systems(), ids=lambda s: s.name.replace(" ", "_"))
def test_dH_dt_formula_equals_autograd(system) -> None:
    gen = torch.Generator().manual_seed(1)
    for name in ("quadratic", "mlp"):
        obj = get_objective(name)
        for _ in range(4):
            X = obj.x0() + 0.3 * torch.randn(obj.shape, generator=gen, dtype=D)
            z = system.random_state(X, gen)
            _, G = value_and_grad(obj, z["X"])
            if isinstance(system, AdamSystem):
                system.reset()
                system.refresh(z, G + torch.randn(G.shape, generator=gen, dtype=D), 0.0)  # a basis not from G
            leaves = {k: v.clone().requires_grad_(True) for k, v in z.items()}
            H = system.energy(leaves, obj)
            grads = torch.autograd.grad(H, list(leaves.values()), allow_unused=True)
            field = system.rhs(z, G)
            want = sum(float((g * field[k]).sum()) for k, g in zip(leaves, grads) if g is not None)
            got = float(system.dH_dt(z, G))
            assert got == pytest.approx(want, rel=1e-9, abs=1e-9 * max(1.0, abs(want)))


def test_rk4_is_fourth_order() -> None:
    # heavy ball on f = x^2 / 2 with gamma = 0 is a harmonic oscillator: x(t) = cos t
    sys_ = HeavyBallSystem(gamma=0.0)
    z0 = {"X": t([1.0]), "M": t([0.0])}
    errs = []
    for h in (0.2, 0.1):
        tr = integrate(sys_, z0, half_sq, h, round(2.0 / h))
        errs.append(abs(float(tr.states[-1]["X"][0]) - math.cos(2.0)))
    assert 12 < errs[0] / errs[1] < 20  # 2^4 = 16


# ---------------------------------------------------------------------- the claims, two objectives
SMALL = Settings(steps=40, live_steps=40, probe_starts=1, probe_iters=15, objectives=("quadratic", "mlp"))


@pytest.mark.parametrize("family,expected", [
    ("heavy_ball", {"holds"}), ("factored", {"holds"}), ("hfac", {"holds"}), ("adadiag", {"holds"}),
    ("grams", {"holds"}), ("lionk", {"holds"}), ("ams", {"holds"}), ("adafactor_m", {"conditional"}),
])
def test_each_claim_on_two_objectives(family: str, expected: set[str]) -> None:
    res = check_family(family, SMALL)
    objectives = {r.objective for r in res.records}
    assert {"quadratic", "mlp"} <= objectives
    assert {r.verdict for r in res.records} == expected, [(r.claim, r.objective, r.detail) for r in res.records
                                                          if r.verdict not in expected]


def test_lionk_discrete_on_two_objectives() -> None:
    res = check_family("lionk_discrete", Settings(steps=60, objectives=("quadratic", "rosenbrock")))
    assert {r.objective for r in res.records} >= {"quadratic", "rosenbrock"}
    assert all(r.verdict == "holds" for r in res.records), [r.claim for r in res.records if r.verdict != "holds"]
    printed = [r for r in res.records if "printed constants" in r.claim]
    assert len(printed) == 5 and all(r.margin > 0 for r in printed)  # the seed's inequality is violated


def test_lionk_discrete_system_by_hand() -> None:
    """Iterate (15), its energy and Theorem 4.1's bound on a 2-vector, every number by hand."""
    sysd = LionKDiscreteSystem(theory_kernels(["l1"])["l1"], eps=0.05, lam=0.5, b1=0.9, b2=0.99)
    # D = 0.05 * 0.5 * 0.1 + 0.01 = 0.0125; c = 0.045 / D; a = 1 + 0.5 c; b = 0.009 / (0.09 D)
    assert sysd.constants() == pytest.approx((3.6, 2.8, 8.0), rel=1e-12)
    assert sysd.printed_constants() == pytest.approx((72.0, 73.0, 320.0), rel=1e-12)
    assert sysd.parameters_ok() and not LionKDiscreteSystem(sysd.kernel, b1=0.99, b2=0.9).parameters_ok()
    x, m = t(0.4, -1.0), t(0.2, 0.0)
    x1, m1, mt = sysd.step(x, m, x)  # f = ||x||^2 / 2: g = x, L = 1
    assert mt.tolist() == pytest.approx([0.14, 0.1]) and m1.tolist() == pytest.approx([0.194, 0.01])
    assert x1.tolist() == pytest.approx([0.45 / 1.025, -0.95 / 1.025])  # (x + eps sign(m~)) / (1 + eps lam)
    # lambda x = (0.2, -0.5) lies in the box, so K*(lambda x) = 0: H = f + c (||m||_1 - lambda x.m)
    assert float(sysd.energy(x, m, half_sq)) == pytest.approx(0.58 + 3.6 * (0.2 - 0.5 * 0.08), rel=1e-12)
    # the bound, with L = 1: Delta^2 = 0 (sign(m~) = sign(m1)), dK*(lambda x1) = 0 inside the box
    u = [1 - 0.5 * 0.45 / 1.025, 1 + 0.5 * 0.95 / 1.025]
    d1 = u[0] * 0.14 + u[1] * 0.1
    expected = -0.05 * 2.8 * d1 + 0.05**2 / 2 * (u[0] ** 2 + u[1] ** 2)
    assert sysd.bound(x1, m1, mt, L=1.0) == pytest.approx(expected, rel=1e-12)
    lhs = float(sysd.energy(x1, m1, half_sq) - sysd.energy(x, m, half_sq))
    assert lhs <= expected + 1e-12  # tight here (Hessian = L I, Delta^2 = 0): equal up to rounding
    c_wrong = sysd.constants()[0] / sysd.eps  # the printed c (no factor eps) with the corrected a, b
    lhs_wrong = float(sysd.energy(x1, m1, half_sq, c_wrong) - sysd.energy(x, m, half_sq, c_wrong))
    assert lhs_wrong > expected + 1e-3  # the check fails with the wrong energy


# ---------------------------------------------------------------------- the checkers can fail
def test_hfac_with_constants_n_over_2_fails() -> None:
    st = Settings(steps=20, probe_starts=4, probe_iters=60, objectives=("quadratic",))
    right = family_hfac(st)
    wrong = family_hfac(st, energy_scale=2.0)
    assert all(r.verdict == "holds" for r in right.records)
    adv = [r for r in wrong.records if r.objective == "adversarial states"]
    assert adv and adv[0].verdict == "fails" and adv[0].margin > 0


def test_adafactor_m_state_that_breaks_its_condition_is_not_guaranteed() -> None:
    # G concentrated in entry (0, 0): ||G||^2 = 100 > (4 - 1) 1^T r = 6; M only at (1, 1),
    # where a_i/r_i = b_j/s_j = 0: the bracket is 3 - 100/2 < 0, so dH/dt > 0
    s = AdafactorMSystem(alpha_m=1.0, alpha_r=1.0)
    z = {"X": torch.zeros(2, 2, dtype=D), "M": t([0.0, 0.0], [0.0, 1.0]),
         "r": torch.ones(2, dtype=D), "s": torch.ones(2, dtype=D)}
    G = t([10.0, 0.0], [0.0, 0.0])
    chk = check_state(s, z, G)
    assert chk.verdict == "not guaranteed" and chk.slack == pytest.approx(6.0 - 100.0)
    # w_11 = sqrt(2) / sqrt(1) ; dH/dt = -1/4 * 1 * sqrt(2) * (3 - 50) > 0
    assert chk.dH_dt == pytest.approx(0.25 * math.sqrt(2) * 47)
    # with r large enough the same M and G are guaranteed again
    z2 = {**z, "r": torch.full((2,), 60.0, dtype=D), "s": torch.full((2,), 60.0, dtype=D)}
    assert check_state(s, z2, G).verdict == "guaranteed" and check_state(s, z2, G).dH_dt <= 0


class _WrongHeavyBall(HeavyBallSystem):
    """A deliberately wrong energy: f + ||M||^2 (twice the kinetic term)."""

    def kinetic(self, z):
        return (z["M"] ** 2).sum()


def test_trajectory_checker_fails_on_a_wrong_energy() -> None:
    obj = get_objective("quadratic")
    for cls, want in ((HeavyBallSystem, "holds"), (_WrongHeavyBall, "fails")):
        s = cls(gamma=0.2)
        x0 = obj.x0()
        tr = integrate(s, {"X": x0, "M": torch.zeros_like(x0)}, obj, 0.05, 80, keep_states=False)
        verdict, margin, _ = trajectory_verdict(s, tr)
        assert verdict == want, (cls, margin)


def test_adafactor_m_is_never_reported_unconditional() -> None:
    res = check_family("adafactor_m", Settings(steps=15, probe_starts=1, probe_iters=5, objectives=("quadratic",)))
    assert res.records and all(r.verdict == "conditional" and not r.unconditional for r in res.records)


# ---------------------------------------------------------------------- Lion-K kernels (section 9)
def test_constraint_norms_by_hand() -> None:
    x = t(3.0, -4.0)
    ks = theory_kernels()
    assert [float(constraint_norm(ks[k], x)) for k in ("l1", "lp", "threshold", "topk", "huber")] == \
        pytest.approx([4.0, 5.0, 4.0, 7.0, 4.0])
    pts = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=D)
    for k in ks.values():
        want = torch.stack([constraint_norm(k, p) for p in pts])
        assert torch.allclose(gauge_points(k, pts), want)
    # penalties: threshold e ||x||_1, Huber (e wd / 2) ||x||^2, indicator kernels 0; inf outside
    p = t([0.5, -0.25])
    assert float(penalty_points(ks["threshold"], p, 1.0)[0]) == pytest.approx(0.1 * 0.75)
    assert float(penalty_points(ks["huber"], p, 1.0)[0]) == pytest.approx(0.25 * (0.25 + 0.0625))
    assert math.isinf(float(penalty_points(ks["l1"], t([3.0, 0.0]), 1.0)[0]))


@pytest.mark.parametrize("kname", ["l1", "lp", "threshold", "topk", "huber"])
def test_kernel_gradients_lie_in_the_constraint_set_and_conjugate_subgradients(kname: str) -> None:
    kern = theory_kernels([kname])[kname]
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        c = 5 * torch.randn(12, generator=gen, dtype=D)
        assert float(constraint_norm(kern, kern.grad(c))) <= 1 + 1e-12  # N(gradK) <= 1: the rate's premise
        y = torch.randn(12, generator=gen, dtype=D)
        y = y * (0.9 / float(constraint_norm(kern, y)))
        w = torch.randn(12, generator=gen, dtype=D)
        w = w * (0.95 / float(constraint_norm(kern, w)))
        g = conjugate_subgradient(kern, y)
        assert float(kern.K_star(w)) >= float(kern.K_star(y)) + float(g @ (w - y)) - 1e-12


@pytest.mark.parametrize("kname", ["l1", "lp", "threshold", "topk", "huber"])
def test_lionk_constraint_and_rate_for_each_kernel(kname: str) -> None:
    kern = theory_kernels([kname])[kname]
    st = Settings(live_steps=120, objectives=("quadratic", "mlp"))
    recs, _ = check_lionk_constraint(kname, kern, st)
    assert [r.verdict for r in recs] == ["holds", "holds"], [r.detail for r in recs]
    # the rate bound is the claim's: a run whose optimizer decays less violates it
    bad, _ = check_lionk_constraint(kname, kern, st, optimizer_wd=0.25)
    assert [r.verdict for r in bad] == ["fails", "fails"]


@pytest.mark.parametrize("kname", ["l1", "huber"])
def test_theorem_4_1_inequality_by_hand(kname: str) -> None:
    """Recompute both sides of Theorem 4.1 from the recorded run for the first step."""
    kern = theory_kernels([kname])[kname]
    obj = get_objective("quadratic")
    eps, lam, b1, b2 = 0.05, 0.5, 0.9, 0.99
    run = lionk_discrete_run(kern, obj, 3, eps=eps, lam=lam, b1=b1, b2=b2)
    x = obj.x0()
    x = x * (0.9 / float(constraint_norm(kern, lam * x)))
    m = torch.zeros_like(x)
    _, g = value_and_grad(obj, x)
    m1, mt1 = b2 * m - (1 - b2) * g, b1 * m - (1 - b1) * g
    x1 = (x + eps * kern.grad(mt1)) / (1 + eps * lam)
    D_ = eps * lam * (1 - b1) + (1 - b2)
    c = eps * b1 / D_

    def H(x, m):
        ks = float(kern.K_star(lam * x))
        return float(obj(x)) + ks / lam + c * (ks + float(kern.K(m)) - lam * float((x * m).sum()))

    assert run["corrected:lhs"][0] == pytest.approx(H(x1, m1) - H(x, m), rel=1e-12)
    assert all(lh <= rh + 1e-12 for lh, rh in zip(run["corrected:lhs"], run["corrected:rhs"]))
