"""The continuous-time systems of hamopt's optimizer families, with their energies.

Each class is one section of THEORY.md (the verified restatement of the seeds; where a seed
is wrong, THEORY.md is followed and the docstring says so). A system works on a state, a
``dict`` of float64 tensors (``"X"`` the parameters, an ``m x n`` matrix, plus the family's
moments), and gives:

- :meth:`System.rhs` ``(z, G)``: the vector field, given ``G = grad f(X)``;
- :meth:`System.energy` ``(z, f)``: the energy (Hamiltonian / Lyapunov function) ``H``;
- :meth:`System.dH_dt` ``(z, G)``: the exact derivative of ``H`` along the field, from the
  formula (THEORY.md's where it prints one, else the chain rule written out);
- :meth:`System.slack` ``(z, G)``: the state condition under which ``dH/dt <= 0`` is
  guaranteed, as a number that is ``>= 0`` exactly when it holds (``+inf`` for systems
  whose guarantee needs no state condition), and :meth:`System.parameter_conditions`, the
  conditions on the constants (each ``(text, holds)``).

Notation (THEORY.md): ``a = (G^2) 1_n`` (row sums), ``b = (G^2)^T 1_m`` (column sums),
``S = 1^T r``; products and divisions element-wise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..transforms.kernels import Kernel
from .kernels import conjugate_subgradient, constraint_norm, kernel_label

__all__ = [
    "AdafactorMSystem",
    "AdamSystem",
    "FactoredSystem",
    "GramsSystem",
    "HFacSystem",
    "HeavyBallSystem",
    "LionKDiscreteSystem",
    "LionKSystem",
    "State",
    "System",
]

State = dict[str, Tensor]
Fn = Callable[[Tensor], Tensor]

_INF = math.inf


def _rows(g: Tensor) -> Tensor:
    return g.sum(dim=1)


def _cols(g: Tensor) -> Tensor:
    return g.sum(dim=0)


def _pos(shape: tuple[int, ...], gen: torch.Generator, lo: float = 0.2, hi: float = 3.0) -> Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64)


class System:
    """Base class. Subclasses set ``family``, ``name``, ``reference`` and ``variables``."""

    family = "system"
    name = "system"
    #: where the system comes from (seed, equation numbers, THEORY.md section)
    reference = ""
    variables: tuple[str, ...] = ("X",)
    #: True when the guarantee needs a state condition (``slack``), not only parameters
    conditional = False
    #: weight of ``f`` in ``H`` (Lion-K's ``H`` has ``alpha f``)
    f_weight = 1.0
    #: state entries that must stay positive (probes parameterize them by their logarithm)
    positive: tuple[str, ...] = ()
    #: whether the state probe varies ``X`` itself (only where ``H`` depends on ``X``
    #: through more than ``f``, i.e. Lion-K)
    probe_x = False

    # -- to implement
    def rhs(self, z: State, G: Tensor) -> State:
        raise NotImplementedError

    def kinetic(self, z: State) -> Tensor:
        """``H - f_weight f(X)``."""
        raise NotImplementedError

    def dH_dt(self, z: State, G: Tensor) -> Tensor:
        raise NotImplementedError

    def initial_state(self, X: Tensor, G: Tensor) -> State:
        raise NotImplementedError

    def random_state(self, X: Tensor, gen: torch.Generator) -> State:
        raise NotImplementedError

    # -- shared
    def energy(self, z: State, f: Fn) -> Tensor:
        """``H(z)``; differentiable in every entry of ``z`` when they require grad."""
        return self.f_weight * f(z["X"]) + self.kinetic(z)

    def slack(self, z: State, G: Tensor) -> float:
        """``>= 0`` where the state condition for ``dH/dt <= 0`` holds (``inf``: none needed)."""
        return _INF

    def parameter_conditions(self) -> list[tuple[str, bool]]:
        return []

    def parameters_ok(self) -> bool:
        return all(ok for _, ok in self.parameter_conditions())

    def project(self, z: State) -> State:
        """Map a probe's state onto the states the claim is about (default: unchanged)."""
        return z

    def refresh(self, z: State, G: Tensor, t: float) -> bool:
        """Hook before each integration step (AdaDiag's basis refresh); True if it changed."""
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


# ---------------------------------------------------------------------- 1. heavy ball
class HeavyBallSystem(System):
    """Heavy ball (H-Fac paper, seed 000, section 3.1; THEORY.md section 1)::

        dM/dt = -gamma M - G,   dX/dt = M,   H = f + 1/2 ||M||^2,   dH/dt = -gamma ||M||^2 <= 0
    """

    family = "heavy_ball"
    name = "heavy ball"
    reference = "seed 000 section 3.1; THEORY.md section 1"
    variables = ("X", "M")

    def __init__(self, gamma: float = 1.0) -> None:
        self.gamma = float(gamma)

    def rhs(self, z: State, G: Tensor) -> State:
        return {"X": z["M"], "M": -self.gamma * z["M"] - G}

    def kinetic(self, z: State) -> Tensor:
        return 0.5 * (z["M"] ** 2).sum()

    def dH_dt(self, z: State, G: Tensor) -> Tensor:
        return -self.gamma * (z["M"] ** 2).sum()

    def parameter_conditions(self) -> list[tuple[str, bool]]:
        return [(f"gamma = {self.gamma:g} >= 0", self.gamma >= 0)]

    def initial_state(self, X: Tensor, G: Tensor) -> State:
        return {"X": X.clone(), "M": torch.zeros_like(X)}

    def random_state(self, X: Tensor, gen: torch.Generator) -> State:
        return {"X": X.clone(), "M": torch.randn(X.shape, generator=gen, dtype=X.dtype)}


# ---------------------------------------------------------------------- 2. Adafactor-m
class AdafactorMSystem(System):
    """Adafactor with momentum (seed 000, Proposition 1; THEORY.md section 2)::

        dX/dt = -M sqrt(S) / sqrt(r s^T),  dM/dt = G - alpha_M M,
        dr/dt = a - alpha_r r,  ds/dt = b - alpha_r s,
        H = f + 1/2 sum_ij M_ij^2 sqrt(S) / sqrt(r_i s_j)

    **Proposition 1 is false as stated** (THEORY.md: its proof drops that ``r_i`` enters every
    term through ``S``). The exact derivative is::

        dH/dt = -1/4 sum_ij M_ij^2 w_ij (4 alpha_M - alpha_r + a_i/r_i + b_j/s_j - ||G||^2/S)

    (``w = sqrt(S)/sqrt(r s^T)``), so ``dH/dt <= 0`` is guaranteed only when
    ``||G||_F^2 <= (4 alpha_M - alpha_r) 1^T r``: :meth:`slack` is that difference.
    """

    family = "adafactor_m"
    name = "Adafactor-m"
    reference = "seed 000 Proposition 1 (false as stated); THEORY.md section 2"
    variables = ("X", "M", "r", "s")
    conditional = True
    positive = ("r", "s")

    def __init__(self, alpha_m: float = 1.0, alpha_r: float = 1.0) -> None:
        self.alpha_m, self.alpha_r = float(alpha_m), float(alpha_r)

    @staticmethod
    def _w(z: State) -> Tensor:
        r, s = z["r"], z["s"]
        return torch.sqrt(r.sum()) / torch.sqrt(r[:, None] * s[None, :])

    def rhs(self, z: State, G: Tensor) -> State:
        g2 = G * G
        return {"X": -z["M"] * self._w(z), "M": G - self.alpha_m * z["M"],
                "r": _rows(g2) - self.alpha_r * z["r"], "s": _cols(g2) - self.alpha_r * z["s"]}

    def kinetic(self, z: State) -> Tensor:
        return 0.5 * (z["M"] ** 2 * self._w(z)).sum()

    def dH_dt(self, z: State, G: Tensor) -> Tensor:
        g2 = G * G
        r, s = z["r"], z["s"]
        bracket = (4 * self.alpha_m - self.alpha_r + (_rows(g2) / r)[:, None] + (_cols(g2) / s)[None, :]
                   - g2.sum() / r.sum())
        return -0.25 * (z["M"] ** 2 * self._w(z) * bracket).sum()

    def slack(self, z: State, G: Tensor) -> float:
        return float((4 * self.alpha_m - self.alpha_r) * z["r"].sum() - (G * G).sum())

    def initial_state(self, X: Tensor, G: Tensor) -> State:
        g2 = G * G + 1e-3
        return {"X": X.clone(), "M": torch.zeros_like(X), "r": _rows(g2) / self.alpha_r,
                "s": _cols(g2) / self.alpha_r}

    def random_state(self, X: Tensor, gen: torch.Generator) -> State:
        m, n = X.shape
        return {"X": X.clone(), "M": torch.randn(X.shape, generator=gen, dtype=X.dtype),
                "r": _pos((m,), gen), "s": _pos((n,), gen)}


# ---------------------------------------------------------------------- 3. factored
class FactoredSystem(System):
    """The factored first-order system with ``phi = psi = ||.||^2 / 2`` (seed 000, Appendix
    A.1; THEORY.md section 3)::

        dX/dt = -(beta u~ 1^T + G) - (beta 1 v~^T + G),  u~ = u - G 1/n,  v~ = v - G^T 1/m
        du/dt = G 1/n - alpha u,   dv/dt = G^T 1/m - alpha v
        H = f + (beta n / 2) ||u||^2 + (beta m / 2) ||v||^2
        dH/dt = -2||G||^2 + (beta/n)||G 1||^2 + (beta/m)||G^T 1||^2 - alpha beta (n||u||^2 + m||v||^2)

    ``dH/dt <= 0`` for ``beta`` in ``[0, 1]`` (and ``alpha >= 0``), for every state.
    """

    family = "factored"
    name = "factored first-order"
    reference = "seed 000 Appendix A.1; THEORY.md section 3"
    variables = ("X", "u", "v")

    def __init__(self, alpha: float = 1.0, beta: float = 0.9) -> None:
        self.alpha, self.beta = float(alpha), float(beta)

    def rhs(self, z: State, G: Tensor) -> State:
        m, n = G.shape
        gu, gv = _rows(G) / n, _cols(G) / m
        ut, vt = z["u"] - gu, z["v"] - gv
        dx = -(self.beta * ut[:, None] + G) - (self.beta * vt[None, :] + G)
        return {"X": dx, "u": gu - self.alpha * z["u"], "v": gv - self.alpha * z["v"]}

    def kinetic(self, z: State) -> Tensor:
        m, n = z["X"].shape
        return 0.5 * self.beta * (n * (z["u"] ** 2).sum() + m * (z["v"] ** 2).sum())

    def dH_dt(self, z: State, G: Tensor) -> Tensor:
        m, n = G.shape
        return (-2 * (G * G).sum() + self.beta / n * (_rows(G) ** 2).sum() + self.beta / m * (_cols(G) ** 2).sum()
                - self.alpha * self.beta * (n * (z["u"] ** 2).sum() + m * (z["v"] ** 2).sum()))

    def parameter_conditions(self) -> list[tuple[str, bool]]:
        return [(f"beta = {self.beta:g} in [0, 1]", 0.0 <= self.beta <= 1.0),
                (f"alpha = {self.alpha:g} >= 0", self.alpha >= 0.0)]

    def initial_state(self, X: Tensor, G: Tensor) -> State:
        m, n = X.shape
        return {"X": X.clone(), "u": X.new_zeros(m), "v": X.new_zeros(n)}

    def random_state(self, X: Tensor, gen: torch.Generator) -> State:
        m, n = X.shape
        return {"X": X.clone(), "u": torch.randn(m, generator=gen, dtype=X.dtype),
                "v": torch.randn(n, generator=gen, dtype=X.dtype)}


# ---------------------------------------------------------------------- 4. H-Fac
class HFacSystem(System):
    """H-Fac (seed 000, Proposition 2, whose extraction is garbled; THEORY.md section 4)::

        dX/dt = -1/2 [k_u (u - G1/n) 1^T / sqrt(r) + k_v 1 (v - G^T 1/m)^T / sqrt(s)] - G sqrt(S) / sqrt(r s^T)
        du/dt = G1/n - alpha_u u,  dv/dt = G^T 1/m - alpha_u v,  dr/dt = a - alpha_r r,  ds/dt = b - alpha_r s
        H = f + c_u sum_i u_i^2 / sqrt(r_i) + c_v sum_j v_j^2 / sqrt(s_j)

    with THEORY.md's constants ``c_u = n k_u / 4`` and ``c_v = m k_v / 4`` (``energy_scale``
    multiplies both; it exists only so a check can show that other constants, e.g. ``n/2``
    with ``energy_scale=2``, fail).
    ``dH/dt <= 0`` when all three hold: ``1^T r = 1^T s`` (the state condition, true from a
    zero start; :meth:`slack` is ``-|1^T r - 1^T s| / 1^T r`` up to a rounding tolerance),
    ``alpha_r <= 4 alpha_u`` and ``k_u / sqrt(n) + k_v / sqrt(m) <= 2``. THEORY.md prints no
    closed form of ``dH/dt``; :meth:`dH_dt` is the chain rule written out.
    """

    family = "hfac"
    name = "H-Fac"
    reference = "seed 000 Proposition 2 (garbled there); THEORY.md section 4"
    variables = ("X", "u", "v", "r", "s")
    conditional = True
    positive = ("r", "s")

    def __init__(self, k_u: float = 1.0, k_v: float = 1.0, alpha_u: float = 1.0, alpha_r: float = 1.0,
                 energy_scale: float = 1.0, shape: tuple[int, int] | None = None) -> None:
        self.k_u, self.k_v = float(k_u), float(k_v)
        self.alpha_u, self.alpha_r = float(alpha_u), float(alpha_r)
        self.energy_scale = float(energy_scale)
        self.shape = shape

    def constants(self, m: int, n: int) -> tuple[float, float]:
        """``(c_u, c_v) = energy_scale (n k_u / 4, m k_v / 4)`` (THEORY.md's with scale 1)."""
        return self.energy_scale * n * self.k_u / 4.0, self.energy_scale * m * self.k_v / 4.0

    def rhs(self, z: State, G: Tensor) -> State:
        m, n = G.shape
        r, s = z["r"], z["s"]
        gu, gv = _rows(G) / n, _cols(G) / m
        mom = 0.5 * (self.k_u * ((z["u"] - gu) / r.sqrt())[:, None] + self.k_v * ((z["v"] - gv) / s.sqrt())[None, :])
        g2 = G * G
        return {"X": -mom - G * torch.sqrt(r.sum()) / torch.sqrt(r[:, None] * s[None, :]),
                "u": gu - self.alpha_u * z["u"], "v": gv - self.alpha_u * z["v"],
                "r": _rows(g2) - self.alpha_r * r, "s": _cols(g2) - self.alpha_r * s}

    def kinetic(self, z: State) -> Tensor:
        m, n = z["X"].shape
        cu, cv = self.constants(m, n)
        return cu * (z["u"] ** 2 / z["r"].sqrt()).sum() + cv * (z["v"] ** 2 / z["s"].sqrt()).sum()

    def dH_dt(self, z: State, G: Tensor) -> Tensor:
        m, n = G.shape
        cu, cv = self.constants(m, n)
        d = self.rhs(z, G)
        u, v, r, s = z["u"], z["v"], z["r"], z["s"]
        return ((G * d["X"]).sum()
                + cu * (2 * u * d["u"] / r.sqrt() - 0.5 * u ** 2 * d["r"] / r ** 1.5).sum()
                + cv * (2 * v * d["v"] / s.sqrt() - 0.5 * v ** 2 * d["s"] / s ** 1.5).sum())

    def project(self, z: State) -> State:
        """Rescale ``s`` so ``1^T s = 1^T r`` (the state condition)."""
        return {**z, "s": z["s"] * (z["r"].sum() / z["s"].sum())}

    def slack(self, z: State, G: Tensor) -> float:
        sr, ss = float(z["r"].sum()), float(z["s"].sum())
        return 1e-9 - abs(sr - ss) / max(sr, 1e-300)

    def parameter_conditions(self) -> list[tuple[str, bool]]:
        conds = [(f"alpha_r = {self.alpha_r:g} <= 4 alpha_u = {4 * self.alpha_u:g}", self.alpha_r <= 4 * self.alpha_u)]
        if self.shape is not None:
            m, n = self.shape
            lhs = self.k_u / math.sqrt(n) + self.k_v / math.sqrt(m)
            conds.append((f"k_u/sqrt(n) + k_v/sqrt(m) = {lhs:.3g} <= 2", lhs <= 2.0))
        return conds

    def initial_state(self, X: Tensor, G: Tensor) -> State:
        m, n = X.shape
        g2 = G * G + 1e-3
        tot = g2.sum()
        # 1^T r = 1^T s from the start (both are the sum of G^2): the state condition holds
        return {"X": X.clone(), "u": X.new_zeros(m), "v": X.new_zeros(n),
                "r": _rows(g2) / self.alpha_r, "s": _cols(g2) * (_rows(g2).sum() / tot) / self.alpha_r}

    def random_state(self, X: Tensor, gen: torch.Generator) -> State:
        m, n = X.shape
        r, s = _pos((m,), gen), _pos((n,), gen)
        s = s * (r.sum() / s.sum())  # the state condition 1^T r = 1^T s
        return {"X": X.clone(), "u": torch.randn(m, generator=gen, dtype=X.dtype),
                "v": torch.randn(n, generator=gen, dtype=X.dtype), "r": r, "s": s}


# ---------------------------------------------------------------------- 5. Adam / AdaDiag
class AdamSystem(System):
    """Adam, AdaDiag and AdaDiag++ (seed 001, section 4 and Appendix B; THEORY.md section 5)::

        dW/dt = -P [D] Q^T,  D = M / (sqrt(V) + eps)             (Adam: P = Q = I;
        dM/dt = a (G~ - M),  dV/dt = c (G~^2 - V),  G~ = P^T G Q   one-sided: Q = I)
        H = L + (1 / 2a) <M^2 / (sqrt(V) + eps), 1>
        dH/dt = -sum M^2/(sqrt(V)+eps) - (c/4a) sum M^2 (G~^2 - V) / ((sqrt(V)+eps)^2 sqrt(V))

    ``dH/dt <= 0`` when ``c <= 4a`` (the paper takes ``a = c = 1``; Adam's defaults give
    ``c/a = 0.01``). The seed's printed ``dV/dt`` is garbled (read ``G~^2 - V``), and its
    "non-decreasing" is a typo for non-increasing (THEORY.md). ``H`` does not depend on
    ``P, Q``, so with ``refresh_every`` (AdaDiag's periodic SVD of ``G``, moments kept) it
    stays monotone across refreshes.

    ``direction="grams"`` is the Adam-based Grams form of THEORY.md section 6,
    ``dW/dt = -sign(G) |M| / (sqrt(V) + eps)`` (with ``P = Q = I``), whose ``dH/dt`` adds
    ``sum (G M - |G| |M|) / (sqrt(V) + eps) <= 0``: also non-increasing when ``c <= 4a``.
    """

    family = "adadiag"
    reference = "seed 001 section 4, Appendix B; THEORY.md section 5"
    variables = ("X", "M", "V")
    positive = ("V",)

    def __init__(self, a: float = 1.0, c: float = 1.0, eps: float = 1e-8, sides: int = 0,
                 refresh_every: float | None = None, direction: str = "adam") -> None:
        if sides not in (0, 1, 2):
            raise ValueError(f"Invalid sides: {sides!r} (0 Adam, 1 AdaDiag, 2 AdaDiag++)")
        if direction not in ("adam", "grams"):
            raise ValueError(f"Invalid direction: {direction!r} (expected 'adam' or 'grams')")
        if direction == "grams" and sides:
            raise ValueError("the Grams form is stated with P = Q = I (sides=0)")
        self.a, self.c, self.eps = float(a), float(c), float(eps)
        self.sides, self.refresh_every, self.direction = sides, refresh_every, direction
        self.P: Tensor | None = None
        self.Q: Tensor | None = None
        self._next = 0.0
        self.refresh_times: list[float] = []
        self.name = {0: "Adam", 1: "AdaDiag", 2: "AdaDiag++"}[sides] + (" (Grams form)" if direction == "grams" else "")
        if direction == "grams":
            self.family = "grams"

    def _basis(self, G: Tensor) -> tuple[Tensor | None, Tensor | None]:
        if self.sides == 0:
            return None, None
        u, _, vh = torch.linalg.svd(G, full_matrices=True)
        return u, (vh.T if self.sides == 2 else None)

    def refresh(self, z: State, G: Tensor, t: float) -> bool:
        if self.sides == 0:
            return False
        if self.P is None or (self.refresh_every is not None and t >= self._next - 1e-12):
            self.P, self.Q = self._basis(G)
            self.refresh_times.append(t)
            self._next = t + (self.refresh_every if self.refresh_every is not None else _INF)
            return True
        return False

    def reset(self) -> None:
        self.P = self.Q = None
        self._next = 0.0
        self.refresh_times = []

    def _rot(self, G: Tensor) -> Tensor:
        out = G
        if self.P is not None:
            out = self.P.T @ out
        if self.Q is not None:
            out = out @ self.Q
        return out

    def _back(self, D: Tensor) -> Tensor:
        out = D
        if self.P is not None:
            out = self.P @ out
        if self.Q is not None:
            out = out @ self.Q.T
        return out

    def rhs(self, z: State, G: Tensor) -> State:
        gt = self._rot(G)
        den = z["V"].sqrt() + self.eps
        if self.direction == "grams":
            dx = -torch.sign(G) * z["M"].abs() / den
        else:
            dx = -self._back(z["M"] / den)
        return {"X": dx, "M": self.a * (gt - z["M"]), "V": self.c * (gt * gt - z["V"])}

    def kinetic(self, z: State) -> Tensor:
        return (z["M"] ** 2 / (z["V"].sqrt() + self.eps)).sum() / (2 * self.a)

    def dH_dt(self, z: State, G: Tensor) -> Tensor:
        gt = self._rot(G)
        M, V = z["M"], z["V"]
        sv = V.sqrt()
        den = sv + self.eps
        out = -(M * M / den).sum() - self.c / (4 * self.a) * (M * M * (gt * gt - V) / (den * den * sv)).sum()
        if self.direction == "grams":
            out = out + ((G * M - G.abs() * M.abs()) / den).sum()
        return out

    def parameter_conditions(self) -> list[tuple[str, bool]]:
        return [(f"c = {self.c:g} <= 4a = {4 * self.a:g}", self.c <= 4 * self.a)]

    def initial_state(self, X: Tensor, G: Tensor) -> State:
        self.reset()
        self.refresh(X, G, 0.0)  # type: ignore[arg-type]
        gt = self._rot(G)
        return {"X": X.clone(), "M": torch.zeros_like(gt), "V": gt * gt + 1e-2}

    def random_state(self, X: Tensor, gen: torch.Generator) -> State:
        shape = X.shape
        return {"X": X.clone(), "M": torch.randn(shape, generator=gen, dtype=X.dtype),
                "V": _pos(tuple(shape), gen, 0.01, 3.0)}


# ---------------------------------------------------------------------- 6. Grams / Cautious
class GramsSystem(System):
    """Grams and Cautious (seed 003, Definition 5.6, Theorems 5.7-5.8, E.2-E.4; THEORY.md
    section 6), with ``K(s) = ||s||^2 / 2``, ``Phi = 0``, ``Psi(x) = gamma x``::

        Grams:    dw/dt = -sign(grad L) o |s|,        ds/dt = grad L - gamma s
        Cautious: dw/dt = -s o 1[grad L o s >= 0],    ds/dt = grad L - gamma s
        H = L + ||s||^2 / 2,   dH/dt = <grad L, s> - <grad L, dw-part> - gamma ||s||^2 <= 0

    (Grams: ``<G, s> - <|G|, |s|> - gamma ||s||^2``; Cautious:
    ``<G, s> - sum_{G s >= 0} G s - gamma ||s||^2``.) The seed's bracket is unbalanced: read
    ``-sign(grad L) o |grad K(s)|`` (THEORY.md). :meth:`loss_rate` is ``dL/dt``; Theorem E.4
    says Grams' is at most Cautious's from the same state.
    """

    family = "grams"
    reference = "seed 003 Definition 5.6, Theorems 5.7-5.8, E.2-E.4; THEORY.md section 6"
    variables = ("X", "s")

    def __init__(self, rule: str = "grams", gamma: float = 1.0) -> None:
        if rule not in ("grams", "cautious"):
            raise ValueError(f"Invalid rule: {rule!r} (expected 'grams' or 'cautious')")
        self.rule, self.gamma = rule, float(gamma)
        self.name = "Grams" if rule == "grams" else "Cautious"

    def velocity(self, s: Tensor, G: Tensor) -> Tensor:
        if self.rule == "grams":
            return -torch.sign(G) * s.abs()
        return -s * (G * s >= 0).to(s.dtype)

    def loss_rate(self, z: State, G: Tensor) -> Tensor:
        """``dL/dt = <G, dw/dt>``."""
        return (G * self.velocity(z["s"], G)).sum()

    def rhs(self, z: State, G: Tensor) -> State:
        return {"X": self.velocity(z["s"], G), "s": G - self.gamma * z["s"]}

    def kinetic(self, z: State) -> Tensor:
        return 0.5 * (z["s"] ** 2).sum()

    def dH_dt(self, z: State, G: Tensor) -> Tensor:
        s = z["s"]
        if self.rule == "grams":
            return (G * s).sum() - (G.abs() * s.abs()).sum() - self.gamma * (s * s).sum()
        gs = G * s
        return gs.sum() - gs[gs >= 0].sum() - self.gamma * (s * s).sum()

    def parameter_conditions(self) -> list[tuple[str, bool]]:
        return [(f"gamma = {self.gamma:g} >= 0", self.gamma >= 0)]

    def initial_state(self, X: Tensor, G: Tensor) -> State:
        return {"X": X.clone(), "s": torch.zeros_like(X)}

    def random_state(self, X: Tensor, gen: torch.Generator) -> State:
        return {"X": X.clone(), "s": torch.randn(X.shape, generator=gen, dtype=X.dtype)}


# ---------------------------------------------------------------------- 7. Lion-K
class LionKSystem(System):
    """Lion-K in continuous time (seed 004, equations (3) and (6), Theorem 3.1; THEORY.md
    section 7), in the paper's sign convention (``m`` tracks ``-grad f``)::

        dm/dt = -alpha grad f - gamma m,   dx/dt = grad K(m~) - lambda x,
        m~ = m - eps (alpha grad f + gamma m)
        H = alpha f + (gamma/lambda) K*(lambda x) + eta (K*(lambda x) + K(m) - lambda m^T x)
        -dH/dt = eta' Delta_1 + eta Delta_2 >= 0
        Delta_1 = (m~ - grad K*(lambda x))^T (grad K(m~) - lambda x)
        Delta_2 = (1/eps) (m~ - m)^T (grad K(m~) - grad K(m))

    with ``eta = (1 - eps gamma)/(1 + eps lambda)`` and ``eta' = (gamma + lambda)/(1 + eps
    lambda)``; an identity that needs ``eps gamma <= 1`` and ``lambda x`` in ``dom K*``
    (:meth:`slack` is ``1 - N(lambda x)``, the constraint gauge of
    :func:`~hamopt.theory.kernels.constraint_norm`). From the discrete hyperparameters:
    ``alpha = gamma = (1 - b2)/lr``, ``eps = lr (1 - b1)/(1 - b2)`` (:meth:`from_discrete`).
    The kernel is any :class:`hamopt.transforms.Kernel` with ``K`` and ``K_star``.
    """

    family = "lionk"
    reference = "seed 004 equations (3), (6), Theorem 3.1; THEORY.md section 7"
    variables = ("X", "m")
    probe_x = True

    def __init__(self, kernel: Kernel, alpha: float = 1.0, gamma: float = 1.0, lam: float = 0.5,
                 eps: float = 0.5) -> None:
        if lam <= 0:
            raise ValueError(f"Invalid lam: {lam!r} (the check uses lambda > 0)")
        self.kernel = kernel
        self.alpha, self.gamma, self.lam, self.eps = float(alpha), float(gamma), float(lam), float(eps)
        self.f_weight = self.alpha
        self.eta = (1 - self.eps * self.gamma) / (1 + self.eps * self.lam)
        self.eta_p = (self.gamma + self.lam) / (1 + self.eps * self.lam)
        self.name = f"Lion-K, {kernel_label(kernel)}"

    @classmethod
    def from_discrete(cls, kernel: Kernel, lr: float, betas: tuple[float, float], wd: float) -> LionKSystem:
        b1, b2 = betas
        alpha = (1 - b2) / lr
        return cls(kernel, alpha=alpha, gamma=alpha, lam=wd, eps=lr * (1 - b1) / (1 - b2))

    def _mt(self, z: State, G: Tensor) -> Tensor:
        return z["m"] - self.eps * (self.alpha * G + self.gamma * z["m"])

    def rhs(self, z: State, G: Tensor) -> State:
        mt = self._mt(z, G)
        return {"X": self.kernel.grad(mt) - self.lam * z["X"], "m": -self.alpha * G - self.gamma * z["m"]}

    def kinetic(self, z: State) -> Tensor:
        x, m = z["X"], z["m"]
        ks = self.kernel.K_star(self.lam * x)
        return (self.gamma / self.lam) * ks + self.eta * (ks + self.kernel.K(m) - self.lam * (m * x).sum())

    def dH_dt(self, z: State, G: Tensor) -> Tensor:
        x, m = z["X"], z["m"]
        mt = self._mt(z, G)
        gk = self.kernel.grad(mt)
        d1 = ((mt - conjugate_subgradient(self.kernel, self.lam * x)) * (gk - self.lam * x)).sum()
        d2 = ((mt - m) * (gk - self.kernel.grad(m))).sum() / self.eps
        return -(self.eta_p * d1 + self.eta * d2)

    def slack(self, z: State, G: Tensor) -> float:
        return float(1.0 - constraint_norm(self.kernel, self.lam * z["X"])) + 1e-12

    def project(self, z: State) -> State:
        """Scale ``x`` into ``dom K*/lambda`` (gauge at most ``0.999/lambda``)."""
        n = constraint_norm(self.kernel, self.lam * z["X"])
        return {**z, "X": z["X"] * torch.clamp(0.999 / n.clamp_min(1e-300), max=1.0)}

    def parameter_conditions(self) -> list[tuple[str, bool]]:
        return [(f"eps gamma = {self.eps * self.gamma:g} <= 1", self.eps * self.gamma <= 1.0)]

    def initial_state(self, X: Tensor, G: Tensor) -> State:
        """``m = 0`` and ``x`` scaled into ``dom K*/lambda`` (gauge at most ``0.9/lambda``):
        phase 2 of Theorem 3.1 starts where ``H`` is finite."""
        n = float(constraint_norm(self.kernel, self.lam * X))
        return {"X": X * min(1.0, 0.9 / n) if n > 0 else X.clone(), "m": torch.zeros_like(X)}

    def random_state(self, X: Tensor, gen: torch.Generator) -> State:
        # x inside dom K*/lambda: scale a random direction to gauge 0.9/lambda
        d = torch.randn(X.shape, generator=gen, dtype=X.dtype)
        d = d * (0.9 / self.lam / float(constraint_norm(self.kernel, d)))
        return {"X": d, "m": torch.randn(X.shape, generator=gen, dtype=X.dtype)}


class LionKDiscreteSystem:
    """Lion-K in discrete time: iterate (15) of seed 004 and Theorem 4.1 (THEORY.md section 8).

    Not an ODE but a map, one step of size ``eps`` with implicit weight decay ``lambda``::

        m~_t    = b1 m_t - (1 - b1) g_t                    (g_t = grad f(x_t); m tracks -grad f)
        m_{t+1} = b2 m_t - (1 - b2) g_t
        x_{t+1} = (x_t + eps grad K(m~_t)) / (1 + eps lambda)

    Energy ``H = f(x) + K*(lambda x)/lambda + c (K*(lambda x) + K(m) - lambda x^T m)`` and
    Theorem 4.1: ``H_{t+1} - H_t <= -eps (a Delta^1_t + b Delta^2_t) + (L eps^2/2)
    ||grad K(m~_t) - lambda x_{t+1}||^2`` for an ``L``-smooth ``f``, with
    ``Delta^1_t = <grad K(m~_t) - lambda x_{t+1}, m~_t - dK*(lambda x_{t+1})>`` and
    ``Delta^2_t = <grad K(m~_t) - grad K(m_{t+1}), m~_t - m_{t+1}>`` (both ``>= 0`` by
    convexity). Constants (THEORY.md's re-derivation; the seed's printed ones fail, by 5 to
    800 on l1, Huber and ``||.||^2/2`` kernels): ``D = eps lambda (1 - b1) + (1 - b2)``,
    ``c = eps b1 / D`` (the printed ``c`` lacks the factor ``eps``), ``a = 1 + lambda c``,
    ``b = b1 (1 - b2) / ((b2 - b1) D)``. :meth:`printed_constants` gives the seed's, for the
    check that they fail. The guarantee needs ``0 <= b1 < b2 < 1``, ``eps, lambda > 0`` and
    ``lambda x_t`` inside ``dom K*`` (phase 2; phase 1 shrinks the distance to it at least as
    ``(1/(1 + eps lambda))^t``).
    """

    family = "lionk_discrete"
    reference = "seed 004 (Lion-K), iterate (15) and Theorem 4.1; THEORY.md section 8 (corrected constants)"
    conditional = False

    def __init__(self, kernel: Kernel, eps: float = 0.05, lam: float = 0.5, b1: float = 0.9,
                 b2: float = 0.99) -> None:
        if lam <= 0 or eps <= 0:
            raise ValueError(f"Invalid eps/lam: {eps!r}, {lam!r} (Theorem 4.1 needs both > 0)")
        self.kernel = kernel
        self.eps, self.lam, self.b1, self.b2 = float(eps), float(lam), float(b1), float(b2)
        self.name = f"Lion-K discrete, {kernel_label(kernel)}"

    @property
    def D(self) -> float:
        return self.eps * self.lam * (1 - self.b1) + (1 - self.b2)

    def constants(self) -> tuple[float, float, float]:
        """``(c, a, b)`` of THEORY.md section 8."""
        e, lam, b1, b2, D = self.eps, self.lam, self.b1, self.b2, self.D
        return e * b1 / D, 1 + lam * e * b1 / D, b1 * (1 - b2) / ((b2 - b1) * D)

    def printed_constants(self) -> tuple[float, float, float]:
        """``(c, a, b)`` as printed in the seed's Theorem 4.1 (they do not hold)."""
        e, lam, b1, b2, D = self.eps, self.lam, self.b1, self.b2, self.D
        return b1 / D, 1 + b1 / D, b1 * (1 - b2) / (e * lam * (b2 - b1) * D)

    def parameter_conditions(self) -> list[tuple[str, bool]]:
        return [(f"0 <= b1 = {self.b1:g} < b2 = {self.b2:g} < 1", 0 <= self.b1 < self.b2 < 1)]

    def parameters_ok(self) -> bool:
        return all(ok for _, ok in self.parameter_conditions())

    def step(self, x: Tensor, m: Tensor, g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One step of iterate (15): ``(x_{t+1}, m_{t+1}, m~_t)``."""
        mt = self.b1 * m - (1 - self.b1) * g
        m1 = self.b2 * m - (1 - self.b2) * g
        x1 = (x + self.eps * self.kernel.grad(mt)) / (1 + self.eps * self.lam)
        return x1, m1, mt

    def energy(self, x: Tensor, m: Tensor, f: Fn, c: float | None = None) -> Tensor:
        """``H(x, m)`` with the corrected ``c`` (or the ``c`` given)."""
        c = self.constants()[0] if c is None else c
        ks = self.kernel.K_star(self.lam * x)
        return f(x) + ks / self.lam + c * (ks + self.kernel.K(m) - self.lam * (x * m).sum())

    def bound(self, x1: Tensor, m1: Tensor, mt: Tensor, L: float,
              constants: tuple[float, float, float] | None = None) -> float:
        """The right-hand side of Theorem 4.1 for the step that ended at ``(x1, m1)`` from
        ``m~_t = mt`` (corrected constants unless others are given)."""
        _, a, b = self.constants() if constants is None else constants
        gk = self.kernel.grad(mt)
        u = gk - self.lam * x1
        d1 = float((u * (mt - conjugate_subgradient(self.kernel, self.lam * x1))).sum())
        d2 = float(((gk - self.kernel.grad(m1)) * (mt - m1)).sum())
        return -self.eps * (a * d1 + b * d2) + L * self.eps ** 2 / 2 * float((u * u).sum())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, eps={self.eps:g}, lam={self.lam:g}, b1={self.b1:g}, b2={self.b2:g})"


def describe(system: System) -> dict[str, Any]:
    """Name, family, reference and parameter conditions of a system (for reports)."""
    return {"name": system.name, "family": system.family, "reference": system.reference,
            "conditional": system.conditional,
            "parameter_conditions": [{"condition": c, "holds": ok} for c, ok in system.parameter_conditions()]}
