"""The claims ``hamopt theory`` checks, one function per family, each returning records.

Every record says which family, claim and objective it is about, a verdict and a margin:

- ``"holds"``: the claim held everywhere it was checked;
- ``"conditional"``: a conditional claim (Adafactor-m, THEORY.md section 2) whose energy
  increased, if at all, only where its condition failed; Adafactor-m is never reported as
  unconditional, whatever the run shows;
- ``"fails"``: the claim was contradicted (an energy increased where its guarantee applied).

Margins (the record's ``detail`` restates which): for energies along a trajectory, the
largest relative increase of ``H`` per step, ``max_k (H_{k+1} - H_k) / |H_0|`` (negative:
it decreased at every step), with the RK4 step ``h``; for adversarial states, the largest
``dH/dt / N`` found (:mod:`hamopt.theory.probe`); for rates and inequalities, the largest
excess over the bound (scaled as stated); for the AMS corollaries, the largest relative
difference of the parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..transforms.kernels import Kernel
from .integrate import Trajectory, integrate
from .kernels import constraint_norm, kernel_label, theory_kernels
from .objectives import Objective, get_objective, value_and_grad
from .probe import probe
from .systems import (
    AdafactorMSystem,
    AdamSystem,
    FactoredSystem,
    GramsSystem,
    HeavyBallSystem,
    HFacSystem,
    LionKDiscreteSystem,
    LionKSystem,
    System,
)

__all__ = ["FAMILIES", "FamilyResult", "Record", "Settings", "StateCheck", "TOL", "check_energy", "check_family",
           "check_lionk_constraint", "check_state", "run_claims", "trajectory_verdict"]

#: Relative tolerance for "did not increase" (rounding of float64 sums of a few hundred terms).
TOL = 1e-9


@dataclass
class Record:
    """One line of ``hamopt theory``'s output (``as_json`` is the ``--json`` record)."""

    family: str
    claim: str
    objective: str
    verdict: str
    margin: float
    figure: str | None = None
    h: float | None = None
    detail: str = ""
    unconditional: bool = True
    #: for conditional claims: where ``H`` rose relative to the condition (one phrase)
    note: str = ""

    def __post_init__(self) -> None:
        if not self.note and not self.unconditional and self.detail:
            self.note = self.detail.split(";")[0] if self.detail.startswith("H ") else ""

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["margin"] = _json_float(self.margin)
        return d


def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf" if x < 0 else "nan")


@dataclass
class Settings:
    """Sizes of the checks. ``steps``: RK4 steps per trajectory (step ``h`` per family);
    ``live_steps``: optimizer steps of the live checks; ``probe_starts``/``probe_iters``:
    the adversarial search; ``objectives``: which matrix objectives."""

    steps: int = 600
    live_steps: int = 400
    probe_starts: int = 6
    probe_iters: int = 100
    objectives: tuple[str, ...] = ("quadratic", "rosenbrock", "mlp")


@dataclass
class FamilyResult:
    """Records plus what the figures need (trajectories by system name and objective, and
    family-specific series)."""

    family: str
    records: list[Record] = field(default_factory=list)
    trajectories: dict[str, dict[str, Trajectory]] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------- energy claims
def _start(system: System, obj: Objective) -> dict[str, Tensor]:
    x0 = obj.x0()
    _, g0 = value_and_grad(obj, x0)
    return system.initial_state(x0, g0)


@dataclass
class StateCheck:
    """One state: ``dH/dt`` (formula), the condition's slack, and whether ``dH/dt <= 0`` is
    guaranteed there (the state condition and the parameter conditions hold)."""

    dH_dt: float
    slack: float
    guaranteed: bool

    @property
    def verdict(self) -> str:
        """``"guaranteed"`` or ``"not guaranteed"``."""
        return "guaranteed" if self.guaranteed else "not guaranteed"


def check_state(system: System, z: dict[str, Tensor], G: Tensor) -> StateCheck:
    """Whether the energy's decrease is guaranteed at one state with gradient ``G``."""
    slack = system.slack(z, G)
    return StateCheck(float(system.dH_dt(z, G)), slack, slack >= 0 and system.parameters_ok())


def trajectory_verdict(system: System, tr: Trajectory, always_conditional: bool = False) -> tuple[str, float, str]:
    """Verdict, margin and detail of "H is non-increasing" along one trajectory."""
    inc, _ = tr.max_relative_increase()
    e = tr.energy
    scale = max(abs(e[0]), 1e-300)
    rises = [k for k in range(len(e) - 1) if (e[k + 1] - e[k]) / scale > TOL]
    rises_ok = [k for k in rises if tr.slack[k] >= 0 and tr.slack[k + 1] >= 0]
    cond_failed = any(s < 0 for s in tr.slack)
    params = system.parameters_ok()
    parts = [f"h = {tr.h:g}, {len(e) - 1} RK4 steps, H {e[0]:.4g} -> {e[-1]:.4g}"]
    if tr.diverged:
        parts.append("diverged (stopped where the state left the finite numbers)")
    if system.conditional or always_conditional:
        parts.append(f"condition failed at {sum(s < 0 for s in tr.slack)} of {len(tr.slack)} points")
        parts.append(f"H rose at {len(rises)} steps, {len(rises_ok)} of them where the condition held")
    elif rises:
        parts.append(f"H rose at {len(rises)} steps")
    if not params:
        bad = [c for c, ok in system.parameter_conditions() if not ok]
        parts.append("parameter conditions do not hold: " + "; ".join(bad))
    if system.conditional or always_conditional:
        if not rises:
            note = "H never rose" + (f", condition failed at {sum(s < 0 for s in tr.slack)} points" if cond_failed
                                     else ", condition held throughout")
        elif rises_ok:
            note = "H rose where the condition held"
        else:
            note = "H rose only where the condition failed"
        parts.insert(0, note)
    if rises_ok and params:
        verdict = "fails"
    elif always_conditional or rises or cond_failed or not params:
        verdict = "conditional"
    else:
        verdict = "holds"
    if tr.diverged and verdict == "holds":
        verdict = "fails"
    return verdict, inc, "; ".join(parts)


def probe_verdict(system: System, X: Tensor, settings: Settings, seed: int = 0,
                  always_conditional: bool = False) -> tuple[str, float, str]:
    """Verdict, margin and detail of "dH/dt <= 0 wherever the guarantee applies" on random
    and adversarial states."""
    res = probe(system, X, starts=settings.probe_starts, iters=settings.probe_iters, seed=seed)
    ok = res.max_where_condition_holds
    bad = res.max_where_condition_fails
    params = system.parameters_ok()
    detail = f"{res.states} states; max dH/dt / N where the condition holds: {ok:.3g}"
    if system.conditional or always_conditional:
        detail += f", where it fails: {bad:.3g}"
        note = ("H rose where the condition held" if ok > TOL else
                "H rose only where the condition failed" if bad > TOL else "H never rose")
        detail = note + "; " + detail
    if ok > TOL and params:
        return "fails", ok, detail
    if always_conditional or bad > TOL or not params:
        return "conditional", max(ok, bad), detail
    return "holds", ok, detail


def check_energy(system: System, claim: str, settings: Settings, h: float, figure: str | None,
                 always_conditional: bool = False, objectives: tuple[str, ...] | None = None,
                 adversarial: bool = True) -> tuple[list[Record], dict[str, Trajectory]]:
    """"``H`` is non-increasing along the ODE": one trajectory per objective and an
    adversarial probe. Returns the records and the trajectories by objective."""
    records = []
    trs: dict[str, Trajectory] = {}
    fam = system.family
    for name in objectives or settings.objectives:
        obj = get_objective(name)
        if isinstance(system, HFacSystem):
            system.shape = obj.shape
        tr = integrate(system, _start(system, obj), obj, h, settings.steps, keep_states=False)
        trs[name] = tr
        v, margin, detail = trajectory_verdict(system, tr, always_conditional)
        records.append(Record(fam, claim, name, v, margin, figure, h, detail,
                              unconditional=not (system.conditional or always_conditional)))
    if adversarial:
        obj = get_objective((objectives or settings.objectives)[0])
        X = obj.x0()
        if isinstance(system, HFacSystem):
            system.shape = obj.shape
        v, margin, detail = probe_verdict(system, X, settings, always_conditional=always_conditional)
        records.append(Record(fam, claim, "adversarial states", v, margin, figure, None, detail,
                              unconditional=not (system.conditional or always_conditional)))
    return records, trs


def _fig(family: str, suffix: str = "") -> str:
    return f"theory-{family}{suffix}.png"


# ---------------------------------------------------------------------- the families
def family_heavy_ball(settings: Settings) -> FamilyResult:
    """THEORY.md section 1."""
    out = FamilyResult("heavy_ball")
    s = HeavyBallSystem(gamma=1.0)
    recs, trs = check_energy(s, "H = f + ||M||^2/2 is non-increasing (dH/dt = -gamma ||M||^2, gamma = 1)",
                             settings, 0.005, _fig("heavy_ball"))
    out.records += recs
    out.trajectories[s.name] = trs
    return out


def family_adafactor_m(settings: Settings) -> FamilyResult:
    """THEORY.md section 2: conditional, never unconditional."""
    out = FamilyResult("adafactor_m")
    s = AdafactorMSystem(alpha_m=1.0, alpha_r=1.0)
    recs, trs = check_energy(
        s, "H is non-increasing only where ||G||^2 <= (4 alpha_M - alpha_r) 1^T r (Proposition 1 is false as stated)",
        settings, 0.005, _fig("adafactor_m"), always_conditional=True)
    out.records += recs
    out.trajectories[s.name] = trs
    # a start that breaks the condition: small r, s (as after a large gradient arrives)
    name = settings.objectives[0]
    obj = get_objective(name)
    z0 = _start(s, obj)
    z0["r"], z0["s"] = z0["r"] * 0.02, z0["s"] * 0.02
    _, g0 = value_and_grad(obj, z0["X"])
    z0["M"] = g0.clone()
    tr = integrate(s, z0, obj, 0.002, settings.steps, keep_states=False)
    v, margin, detail = trajectory_verdict(s, tr, always_conditional=True)
    out.records.append(Record("adafactor_m", "same, from a start that breaks the condition (r, s / 50)",
                              name, v, margin, _fig("adafactor_m"), 0.002, detail, unconditional=False))
    out.trajectories["Adafactor-m, condition broken at start"] = {name: tr}
    return out


def family_factored(settings: Settings) -> FamilyResult:
    """THEORY.md section 3."""
    out = FamilyResult("factored")
    s = FactoredSystem(alpha=1.0, beta=0.9)
    recs, trs = check_energy(s, "H = f + (beta n/2)||u||^2 + (beta m/2)||v||^2 is non-increasing (beta = 0.9)",
                             settings, 0.005, _fig("factored"))
    out.records += recs
    out.trajectories[s.name] = trs
    return out


def family_hfac(settings: Settings, energy_scale: float = 1.0) -> FamilyResult:
    """THEORY.md section 4: constants n/4, m/4 under the three conditions (``alpha_u = 0.25``,
    ``alpha_r = 1``: the boundary ``alpha_r = 4 alpha_u``, where the momentum's damping is
    weakest). ``energy_scale`` multiplies the constants (a deliberately wrong energy, e.g.
    2 for n/2, m/2, must then fail)."""
    out = FamilyResult("hfac")
    s = HFacSystem(k_u=1.0, k_v=1.0, alpha_u=0.25, alpha_r=1.0, energy_scale=energy_scale)
    consts = "n/4, m/4" if energy_scale == 1.0 else f"{energy_scale:g} n/4, {energy_scale:g} m/4"
    claim = (f"H with constants {consts} is non-increasing when 1^T r = 1^T s, alpha_r <= 4 alpha_u "
             "(1 <= 4 x 0.25) and k_u/sqrt(n) + k_v/sqrt(m) <= 2 (k = 1)")
    recs, trs = check_energy(s, claim, settings, 0.005, _fig("hfac"))
    out.records += recs
    out.trajectories[s.name] = trs
    return out


def family_adadiag(settings: Settings) -> FamilyResult:
    """THEORY.md section 5: Adam, AdaDiag, AdaDiag++ (with basis refreshes, moments kept)."""
    out = FamilyResult("adadiag")
    every = max(settings.steps * 0.005 / 6, 0.005)
    for sides, claim in [(0, "Adam: H = L + <M^2/(sqrt(V)+eps), 1>/(2a) is non-increasing (a = c = 1 <= 4a)"),
                         (1, "AdaDiag: H non-increasing across basis refreshes (SVD every "
                             f"{every:g} time units, moments kept)"),
                         (2, "AdaDiag++: H non-increasing across two-sided basis refreshes (every "
                             f"{every:g} time units)")]:
        s = AdamSystem(a=1.0, c=1.0, eps=1e-8, sides=sides, refresh_every=every if sides else None)
        recs, trs = check_energy(s, claim, settings, 0.005, _fig("adadiag"), adversarial=(sides == 0))
        for r, tr in zip(recs, trs.values()):
            if sides:
                r.detail += f"; {len(tr.refreshes)} basis refreshes"
        out.records += recs
        out.trajectories[s.name] = trs
    return out


def family_grams(settings: Settings) -> FamilyResult:
    """THEORY.md section 6: Grams, Cautious, Theorem E.4, the Adam-based Grams form."""
    out = FamilyResult("grams")
    g, c = GramsSystem("grams", gamma=1.0), GramsSystem("cautious", gamma=1.0)
    for s in (g, c):
        recs, trs = check_energy(s, f"{s.name}: H = L + ||s||^2/2 is non-increasing (K = ||s||^2/2, "
                                    "Phi = 0, Psi = gamma x, gamma = 1)", settings, 0.005, _fig("grams"))
        out.records += recs
        out.trajectories[s.name] = trs
    sa = AdamSystem(a=1.0, c=1.0, direction="grams")
    recs, trs = check_energy(sa, "Adam-based Grams form -sign(G)|M|/(sqrt(V)+eps): section 5's H is "
                                 "non-increasing (c <= 4a)", settings, 0.005, _fig("grams"))
    out.records += recs
    out.trajectories[sa.name] = trs
    # Theorem E.4: dL/dt(Grams) <= dL/dt(Cautious) from the same state
    gen = torch.Generator().manual_seed(0)
    worst_all = -math.inf
    for name in settings.objectives:
        obj = get_objective(name)
        worst = -math.inf
        tr = integrate(c, _start(c, obj), obj, 0.005, settings.steps, keep_states=True)
        states = list(tr.states[:: max(1, len(tr.states) // 200)])
        states += [g.random_state(obj.x0() + 0.3 * torch.randn(obj.shape, generator=gen, dtype=torch.float64), gen)
                   for _ in range(100)]
        for z in states:
            _, G = value_and_grad(obj, z["X"])
            diff = float(g.loss_rate(z, G) - c.loss_rate(z, G))
            norm = float((G.abs() * z["s"].abs()).sum()) + 1e-300
            worst = max(worst, diff / norm)
        worst_all = max(worst_all, worst)
        v = "holds" if worst <= TOL else "fails"
        out.records.append(Record("grams", "Theorem E.4: dL/dt under Grams <= dL/dt under Cautious from the same state",
                                  name, v, worst, _fig("grams"), 0.005,
                                  f"{len(states)} states (the Cautious trajectory and 100 random ones); margin = "
                                  "max (dL/dt_Grams - dL/dt_Cautious) / <|G|, |s|>"))
    out.series["e4_margin"] = worst_all
    return out


def family_lionk(settings: Settings, kernels: dict[str, Kernel] | None = None) -> FamilyResult:
    """THEORY.md sections 7 and 9: the continuous H per kernel, and the live optimizer's
    constraint set and rate per kernel."""
    out = FamilyResult("lionk")
    for kname, kern in (kernels or theory_kernels()).items():
        s = LionKSystem(kern, alpha=1.0, gamma=1.0, lam=0.5, eps=0.5)
        recs, trs = check_energy(s, f"{kernel_label(kern)}: H of equation (6) is non-increasing "
                                    "(alpha = gamma = 1, lambda = 0.5, eps = 0.5)", settings, 0.005,
                                 _fig("lionk"))
        out.records += recs
        out.trajectories[s.name] = trs
        recs, series = check_lionk_constraint(kname, kern, settings)
        out.records += recs
        out.series[kname] = series
    return out


def check_lionk_constraint(kname: str, kern: Kernel, settings: Settings, lr: float = 0.02,
                           wd: float = 1.0, optimizer_wd: float | None = None
                           ) -> tuple[list[Record], dict[str, list[float]]]:
    """Section 9 on a live :class:`hamopt.LionK`: from ``N(x_0) = 4/wd``,
    ``N(x_t) - 1/wd <= (1 - lr wd)^t (N(x_0) - 1/wd)`` at every step, and once inside
    (``N <= 1/wd`` up to 1e-9 relative) it stays inside. ``optimizer_wd`` runs the optimizer
    with another weight decay than the claim's (so a test can see the check fail)."""
    import hamopt

    records = []
    series: dict[str, list[float]] = {}
    spec = {"l1": {}, "lp": {"p": getattr(kern, "p", None)}, "threshold": {"e": getattr(kern, "e", None)},
            "topk": {"k": getattr(kern, "k", None)}, "huber": {"e": getattr(kern, "e", None)}}[kname]
    for name in settings.objectives:
        obj = get_objective(name)
        x0 = obj.x0()
        x0 = x0 * (4.0 / wd / float(constraint_norm(kern, x0)))
        p = torch.nn.Parameter(x0.clone())
        opt = hamopt.create("lionk", [p], lr=lr, betas=(0.9, 0.99), kernel=kname,
                            weight_decay=wd if optimizer_wd is None else optimizer_wd, **spec)
        bound0 = float(constraint_norm(kern, p.detach())) - 1 / wd
        norms, bounds = [], []
        worst, entered, left = -math.inf, None, False
        for t in range(settings.live_steps + 1):
            n = float(constraint_norm(kern, p.detach()))
            b = (1 - lr * wd) ** t * bound0
            norms.append(n)
            bounds.append(1 / wd + b)
            if t > 0:
                worst = max(worst, (n - 1 / wd - b) * wd)
            inside = n - 1 / wd <= 1e-9 / wd
            if inside and entered is None:
                entered = t
            if entered is not None and not inside:
                left = True
            if t == settings.live_steps:
                break
            opt.zero_grad()
            loss = obj(p)
            loss.backward()
            opt.step()
        ok = worst <= 1e-9 and not left
        where = (f"entered at step {entered}" if entered is not None
                 else f"not inside after {settings.live_steps} steps, {norms[-1] * wd - 1:.2g} (relative) from the "
                      "boundary and within the bound")
        records.append(Record(
            "lionk", f"{kernel_label(kern)}: live LionK iterates enter N(x) <= 1/wd at rate (1 - lr wd)^t and stay "
                     f"(lr = {lr}, wd = {wd})",
            name, "holds" if ok else "fails", worst, _fig("lionk", f"-constraint-{kname}"), None,
            f"{where}; {'left the set after entering' if left else 'stayed'}; "
            "margin = max (N(x_t) - 1/wd - bound_t) wd"))
        series[name] = norms
        series[name + ":bound"] = bounds
    series["wd"] = [wd]
    return records, series


# ---------------------------------------------------------------------- Lion-K discrete
def _box_L(obj: Objective, radius: float) -> float | None:
    """A smoothness constant valid on ``||x||_inf <= radius`` (where Lion-K's iterates stay)."""
    if obj.L is not None:
        return obj.L
    if obj.name == "rosenbrock":
        # Gershgorin on the chained Rosenbrock / 10: each Hessian row sums to at most
        # (1200 R^2 + 400 R + 202)/10 + 2 * 400 R / 10
        return (1200 * radius ** 2 + 400 * radius + 202) / 10 + 80 * radius
    return None


def lionk_discrete_run(kern: Kernel, obj: Objective, steps: int, eps: float = 0.05, lam: float = 0.5,
                       b1: float = 0.9, b2: float = 0.99, start_gauge: float = 0.9) -> dict[str, list[float]]:
    """Iterate (15) of seed 004 (:class:`LionKDiscreteSystem`) from ``N(lambda x_0) =
    start_gauge``, ``m_0 = 0``, and record both sides of Theorem 4.1 with THEORY.md's
    corrected constants and with the printed ones, and the gauge ``N(lambda x_t)``."""
    system = LionKDiscreteSystem(kern, eps=eps, lam=lam, b1=b1, b2=b2)
    consts = {"corrected": system.constants(), "printed": system.printed_constants()}
    L = _box_L(obj, 1.0 / lam)
    x = obj.x0()
    x = x * (start_gauge / float(constraint_norm(kern, lam * x)))
    m = torch.zeros_like(x)
    out: dict[str, list[float]] = {"gauge": [float(constraint_norm(kern, lam * x))]}
    for k in consts:
        out[k + ":lhs"], out[k + ":rhs"] = [], []
    for _ in range(steps):
        _, g = value_and_grad(obj, x)
        x1, m1, mt = system.step(x, m, g)
        if not (torch.isfinite(x1).all() and torch.isfinite(m1).all()):
            break
        for k, cab in consts.items():
            out[k + ":lhs"].append(float(system.energy(x1, m1, obj, cab[0]) - system.energy(x, m, obj, cab[0])))
            out[k + ":rhs"].append(system.bound(x1, m1, mt, L or 0.0, cab))
        x, m = x1, m1
        out["gauge"].append(float(constraint_norm(kern, lam * x)))
    out["params"] = [eps, lam, b1, b2, L or float("nan")]
    return out


def family_lionk_discrete(settings: Settings, kernels: dict[str, Kernel] | None = None) -> FamilyResult:
    """THEORY.md section 8: Theorem 4.1 step by step with the corrected constants, the
    printed constants violated, and phase 1's rate ``(1/(1 + eps lambda))^t``."""
    out = FamilyResult("lionk_discrete")
    eps, lam = 0.05, 0.5
    objs = [n for n in settings.objectives if _box_L(get_objective(n), 1 / lam) is not None]
    for kname, kern in (kernels or theory_kernels()).items():
        label = kernel_label(kern)
        printed_worst, printed_where = -math.inf, ""
        for name in objs:
            obj = get_objective(name)
            run = lionk_discrete_run(kern, obj, settings.steps, eps=eps, lam=lam)
            out.series[f"{kname}:{name}"] = run
            h0 = abs(run["corrected:lhs"][0]) + 1e-300 if run["corrected:lhs"] else 1.0
            scale = max(abs(float(obj(obj.x0()))), 1.0)
            exc = [(lh - rh) / scale for lh, rh in zip(run["corrected:lhs"], run["corrected:rhs"])]
            worst = max(exc) if exc else math.inf
            _ = h0
            out.records.append(Record(
                "lionk_discrete", f"{label}: Theorem 4.1 holds step by step with THEORY.md's constants "
                                  f"(eps = {eps}, lambda = {lam}, betas = (0.9, 0.99), L = {run['params'][4]:.4g})",
                name, "holds" if worst <= TOL else "fails", worst, _fig("lionk_discrete"), None,
                f"{len(exc)} steps; margin = max (H_(t+1) - H_t - bound_t) / max(f(x_0), 1)"))
            pexc = [(lh - rh) / scale for lh, rh in zip(run["printed:lhs"], run["printed:rhs"])]
            if pexc and max(pexc) > printed_worst:
                printed_worst, printed_where = max(pexc), name
            # phase 1, from outside the domain
            run1 = lionk_discrete_run(kern, obj, settings.steps, eps=eps, lam=lam, start_gauge=3.0)
            g = run1["gauge"]
            q = 1 / (1 + eps * lam)
            worst1 = max((gt - 1 - q ** t * (g[0] - 1)) for t, gt in enumerate(g) if t > 0)
            out.series[f"{kname}:{name}:phase1"] = g
            out.records.append(Record(
                "lionk_discrete", f"{label}: phase 1, N(lambda x_t) - 1 <= (1/(1 + eps lambda))^t (N(lambda x_0) - 1)",
                name, "holds" if worst1 <= TOL else "fails", worst1, _fig("lionk_discrete"), None,
                f"from N(lambda x_0) = 3, {len(g) - 1} steps; margin = max excess over the bound"))
        out.records.append(Record(
            "lionk_discrete",
            f"{label}: the seed's printed constants of Theorem 4.1 are violated (THEORY.md section 8)",
            printed_where or (objs[0] if objs else "-"), "holds" if printed_worst > TOL else "fails", printed_worst,
            _fig("lionk_discrete"), None,
            "margin = largest violation of the printed inequality, (H_(t+1) - H_t - bound_t) / max(f(x_0), 1)"))
    return out


# ---------------------------------------------------------------------- AMS corollaries
def _adam_dir(m: Tensor, v: Tensor, t: int, b1: float, b2: float, eps: float) -> Tensor:
    return (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)


def _reference(kind: str, x0: Tensor, obj: Objective, lr: float, steps: int) -> Tensor:
    """Plain loops of seed 003: Adam (via ``torch.optim.Adam``), Cautious Adam (Definition
    3.2: ``h = 1[u g >= 0]``, ``lr d / ||h||_1``) and Grams (Definition 5.1: ``sign(g) |u|``)."""
    b1, b2, eps = 0.9, 0.999, 1e-8
    if kind == "adam":
        p = torch.nn.Parameter(x0.clone())
        opt = torch.optim.Adam([p], lr=lr, betas=(b1, b2), eps=eps, foreach=False)
        for _ in range(steps):
            opt.zero_grad()
            obj(p).backward()
            opt.step()
        return p.detach()
    x = x0.clone()
    m, v = torch.zeros_like(x), torch.zeros_like(x)
    for t in range(1, steps + 1):
        _, g = value_and_grad(obj, x)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        u = _adam_dir(m, v, t, b1, b2, eps)
        if kind == "cautious":
            h = (u * g >= 0).to(x.dtype)
            cnt = float(h.sum())
            x = x - lr * (x.numel() / cnt if cnt > 0 else 1.0) * h * u
        else:
            x = x - lr * torch.sign(g) * u.abs()
    return x


def family_ams(settings: Settings) -> FamilyResult:
    """AMS corollaries B.1-B.3 (seed 003) on a live :class:`hamopt.AMS`."""
    import hamopt

    out = FamilyResult("ams")
    cases = [
        ("Corollary B.1: AMS with b3 = b1 is Adam", dict(betas=(0.9, 0.999, 0.9), misaligned_scale=-1.0), "adam"),
        ("AMS with misaligned_scale = 1 is Adam", dict(betas=(0.9, 0.999, 0.0), misaligned_scale=1.0), "adam"),
        ("Corollary B.2: AMS with b3 = 0, lam = 0 is Cautious Adam",
         dict(betas=(0.9, 0.999, 0.0), misaligned_scale=0.0), "cautious"),
        ("Corollary B.3: AMS with b3 = 0, lam = -1 is Grams", dict(betas=(0.9, 0.999, 0.0), misaligned_scale=-1.0),
         "grams"),
    ]
    steps = min(settings.live_steps, 200)
    for claim, kw, ref in cases:
        for name in settings.objectives:
            obj = get_objective(name)
            lr = 0.01
            x0 = obj.x0()
            p = torch.nn.Parameter(x0.clone())
            opt = hamopt.create("ams", [p], lr=lr, eps=1e-8, **kw)
            diffs = []
            for _ in range(steps):
                opt.zero_grad()
                obj(p).backward()
                opt.step()
            want = _reference(ref, x0, obj, lr, steps)
            d = float((p.detach() - want).abs().max() / want.abs().max().clamp_min(1e-300))
            diffs.append(d)
            out.records.append(Record("ams", claim, name, "holds" if d <= 1e-10 else "fails", d, _fig("ams"), None,
                                      f"{steps} float64 steps, lr = {lr}, against an independent loop "
                                      f"({'torch.optim.Adam' if ref == 'adam' else 'of the definition'}); margin = "
                                      "max |x - x_ref| / max |x_ref|"))
            out.series.setdefault(claim, {})[name] = d
    return out


FAMILIES: dict[str, tuple[str, Callable[[Settings], FamilyResult]]] = {
    "heavy_ball": ("THEORY.md 1: heavy ball", family_heavy_ball),
    "adafactor_m": ("THEORY.md 2: Adafactor-m (conditional)", family_adafactor_m),
    "factored": ("THEORY.md 3: factored first-order system", family_factored),
    "hfac": ("THEORY.md 4: H-Fac", family_hfac),
    "adadiag": ("THEORY.md 5: Adam, AdaDiag, AdaDiag++", family_adadiag),
    "grams": ("THEORY.md 6: Grams and Cautious", family_grams),
    "lionk": ("THEORY.md 7, 9: Lion-K continuous, constraints", family_lionk),
    "lionk_discrete": ("THEORY.md 8: Lion-K discrete, Theorem 4.1", family_lionk_discrete),
    "ams": ("seed 003: AMS corollaries on a live optimizer", family_ams),
}


def check_family(name: str, settings: Settings | None = None) -> FamilyResult:
    """Run one family's claims (a ``ValueError`` naming the families for an unknown one)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r} (choose from {', '.join(FAMILIES)})")
    return FAMILIES[name][1](settings or Settings())


def run_claims(families: list[str] | None = None, settings: Settings | None = None) -> list[FamilyResult]:
    """Run the claims of ``families`` (default: all)."""
    return [check_family(f, settings) for f in (families or list(FAMILIES))]
