"""The registry: one table of every optimizer, the single source of truth.

Each entry is an :class:`OptimizerInfo`: how to build it, its paper, the optimizer-state
memory formula for a parameter shape, flags, and only what differs from its class: the
defaults are read from the class signature (``overrides`` changes some, e.g. AdaDiag++ is
``AdaDiag`` with ``two_sided=True``). The CLI (``hamopt list``, ``hamopt memory``,
``hamopt bench``) and the generic test battery read only this table, so an entry here is
enough to list an optimizer, benchmark it and test it. The table is at the end of this
file; the optimizer modules (:mod:`hamopt.optim`) never import the registry.

    >>> import torch, hamopt
    >>> w = torch.nn.Parameter(torch.zeros(3, 4))
    >>> opt = hamopt.create("adamw", [w], lr=3e-4)
    >>> "hfac" in hamopt.list_optimizers()
    True
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .core.optimizer import enable_stochastic_rounding, set_nonfinite
from .model_groups import _module_groups
from .optim import AMS, CLion, Grams, HFac, Lion, LionK, Lookahead, Ranger, SignFSGD, Sophia
from .optim import adadiag as _adadiag
from .optim import ams as _ams
from .optim import classic as _classic
from .optim import hfac as _hfac
from .optim import lecture as _lecture
from .optim import lionk as _lionk
from .optim.adadiag import AdaDiag, AdafacDiag
from .optim.ams import CAdamW
from .optim.hfac import AdafactorM, AdamWVariant, LionFactor
from .optim.lecture import AdaMod, DiffGrad, SignSGD
from .transforms.rotation import rotation_mode

__all__ = [
    "OptimizerInfo",
    "create",
    "get",
    "list_optimizers",
    "register",
    "registered",
    "signature_defaults",
]

Shape = tuple[int, ...]


@dataclass(frozen=True)
class OptimizerInfo:
    """One registry entry.

    Attributes:
        name: registry name (``hamopt.create(name, ...)``).
        factory: the class, or a callable ``factory(params, **kwargs) -> Optimizer``.
        paper: the reference (authors, title, venue/arXiv, and the seed/algorithm number).
        family: grouping used in listings and benchmarks (``classic``, ``hfac``, ...).
        defaults: keyword arguments passed to ``factory`` unless overridden. Left out, they
            are the factory's signature defaults (:func:`signature_defaults`) updated by
            ``overrides``: an entry states only what differs from its class.
        overrides: the defaults that differ from the factory's signature.
        memory: the optimizer-state size of an ``m x n`` matrix, as text (e.g. ``"2(m+n)"``),
            in numbers of the state dtype, not counting per-parameter scalar counters.
        state_numel: the same as a function of any parameter shape (vectors, 0-d and 4-D
            tensors included, fallbacks included), used by ``hamopt.expected_state_bytes``.
        scalar_bytes: bytes of per-parameter scalar state (a float32 ``step`` is 4), or a
            function of the shape when it depends on it.
        summary: one line saying what it is.
        factored, sign_based, needs_svd, needs_hessian: properties for listings and filters.
        supports_compile: whether ``torch.compile(opt.step)`` is expected to equal eager.
        test_lr: learning rate the generic battery uses on its toy problems.
        test_kwargs: extra keyword arguments for the battery (e.g. a small ``svd_interval``).
        bad_inputs: extra ``(overrides, message regex)`` rows for the battery's error table.
        step_needs: ``"grad"`` (plain ``loss.backward()``) or ``"graph"`` (the step needs
            ``loss.backward(create_graph=True)``, e.g. Sophia's Hutchinson estimate).
    """

    name: str
    factory: Callable[..., torch.optim.Optimizer]
    paper: str
    family: str
    defaults: Mapping[str, Any] | None = None
    memory: str = ""
    state_numel: Callable[[Shape], int] | None = None
    summary: str = ""
    overrides: Mapping[str, Any] = field(default_factory=dict)
    scalar_bytes: int | Callable[[Shape], int] = 4
    factored: bool = False
    sign_based: bool = False
    needs_svd: bool = False
    needs_hessian: bool = False
    supports_compile: bool = True
    test_lr: float | None = None
    test_kwargs: Mapping[str, Any] = field(default_factory=dict)
    bad_inputs: Sequence[tuple[Mapping[str, Any], str]] = ()
    step_needs: str = "grad"

    def __post_init__(self) -> None:
        if self.state_numel is None or not self.memory:
            raise ValueError(f"OptimizerInfo {self.name!r} needs memory (text) and state_numel (a function of a shape)")
        if self.defaults is None:
            object.__setattr__(self, "defaults", {**signature_defaults(self.factory), **self.overrides})
        elif self.overrides:
            object.__setattr__(self, "defaults", {**self.defaults, **self.overrides})

    def create(self, params: Any, **overrides: Any) -> torch.optim.Optimizer:
        kwargs = {**self.defaults, **overrides}  # type: ignore[dict-item]
        return self.factory(params, **kwargs)

    def state_bytes_for(self, shape: Sequence[int], itemsize: int = 4) -> int:
        """Predicted state bytes for one parameter of ``shape`` (state dtype ``itemsize``)."""
        shape = tuple(shape)
        scalars = self.scalar_bytes(shape) if callable(self.scalar_bytes) else self.scalar_bytes
        return int(self.state_numel(shape)) * itemsize + int(scalars)  # type: ignore[misc]

    @property
    def flags(self) -> list[str]:
        names = ("factored", "sign_based", "needs_svd", "needs_hessian")
        return [n for n in names if getattr(self, n)]


#: Keyword arguments that say how a step runs, not what it computes: never registry defaults.
_BEHAVIOUR = ("maximize", "foreach", "state_dtype", "fused", "capturable", "differentiable")


def signature_defaults(factory: Callable[..., Any]) -> dict[str, Any]:
    """The keyword arguments of ``factory`` that have defaults (``params`` and the execution
    settings ``maximize``, ``foreach``, ``state_dtype``, ... left out), in signature order."""
    sig = inspect.signature(factory)
    return {k: p.default for k, p in sig.parameters.items()
            if p.default is not inspect.Parameter.empty and k not in _BEHAVIOUR
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


_REGISTRY: dict[str, OptimizerInfo] = {}


def register(info: OptimizerInfo) -> OptimizerInfo:
    """Add an entry (for your own optimizers; hamopt's are in the table below). Names are
    unique; registering a name twice is an error."""
    if info.name in _REGISTRY:
        raise ValueError(f"Optimizer {info.name!r} is already registered")
    _REGISTRY[info.name] = info
    return info


def registered() -> Mapping[str, OptimizerInfo]:
    """All entries, by name, in registration order."""
    return dict(_REGISTRY)


def list_optimizers(family: str | None = None) -> list[str]:
    """Registry names, in registration order (optionally one family only)."""
    return [n for n, i in _REGISTRY.items() if family is None or i.family == family]


def get(name: str) -> OptimizerInfo:
    """The entry for ``name``; an unknown name is a ``ValueError`` listing the closest names."""
    key = name.strip().lower() if isinstance(name, str) else name
    if key in _REGISTRY:
        return _REGISTRY[key]
    names = list(_REGISTRY)
    close = difflib.get_close_matches(str(key), names, n=4, cutoff=0.5)
    close += [n for n in names if str(key) and str(key) in n and n not in close][:4]
    hint = f"; did you mean {', '.join(repr(c) for c in close[:4])}?" if close else ""
    raise ValueError(f"Unknown optimizer {name!r}{hint} (hamopt list shows all {len(names)})")


def create(name: str, params: Iterable[Any] | torch.nn.Module, *, filter_bias_and_norm: bool = True,
           no_decay: Iterable[Any] = (), decay_embeddings: bool = True,
           **overrides: Any) -> torch.optim.Optimizer:
    """Build the optimizer registered as ``name`` with its defaults updated by ``overrides``.

    ``params`` is what any torch optimizer takes (parameters or parameter groups) or a model
    (``torch.nn.Module``). A model's trainable parameters are split as
    :func:`hamopt.param_groups` does: weight decay on matrices and convolution kernels, none
    on biases, normalization layers (torch's and any module whose own parameters are all
    1-D) and the model's ``no_weight_decay()`` names; each group carries ``param_names``.
    ``no_decay`` (names, patterns or module classes) and ``decay_embeddings=False`` add to
    those rules as in :func:`hamopt.param_groups`; ``filter_bias_and_norm=False`` puts every
    parameter in one group instead. ``no_decay`` and ``decay_embeddings`` need a model.

    ``stochastic_rounding=True`` (hamopt's own optimizers) writes bfloat16 parameters back
    from the float32 update with stochastic rounding (:mod:`hamopt.core.rounding`).
    ``nonfinite="skip"`` or ``"raise"`` (hamopt's own optimizers) sets what a step does with a
    NaN or infinite gradient in every group (:func:`hamopt.core.optimizer.set_nonfinite`).

    Raises:
        ValueError: unknown name (the message lists the closest names) or a bad
            hyperparameter value (the message names the argument and value).
    """
    info = get(name)
    sr = overrides.pop("stochastic_rounding", None)
    nonfinite = overrides.pop("nonfinite", None)
    if isinstance(params, torch.nn.Module):
        if not filter_bias_and_norm and (no_decay or not decay_embeddings):
            raise ValueError("no_decay and decay_embeddings choose which parameters skip weight decay; "
                             "they cannot be used with filter_bias_and_norm=False")
        params = _module_groups(params, filter_bias_and_norm, None, tuple(no_decay), decay_embeddings)
    elif no_decay or not decay_embeddings:
        raise TypeError("no_decay and decay_embeddings need a model (torch.nn.Module), not parameters; "
                        "or build the groups with hamopt.param_groups(model, no_decay=...)")
    opt = info.create(params, **overrides)
    if sr is not None:
        enable_stochastic_rounding(opt, bool(sr))
    if nonfinite is not None:
        set_nonfinite(opt, nonfinite)
    opt.hamopt_name = info.name  # type: ignore[attr-defined]  # read by hamopt.describe
    return opt


# ---------------------------------------------------------------------- shape helpers
def numel(shape: Shape) -> int:
    """Number of elements of ``shape`` (1 for a 0-d tensor)."""
    return math.prod(shape)


def matrix_dims(shape: Shape) -> tuple[int, int] | None:
    """``(m, n)`` of the ``dim0 x prod(rest)`` matrix view, or ``None`` for 0-d/1-d shapes."""
    if len(shape) < 2:
        return None
    return shape[0], math.prod(shape[1:])


# ---------------------------------------------------------------------- memory formulas
def _k(c: int) -> Callable[[Shape], int]:
    """``c`` full-size tensors per parameter."""
    return lambda shape: c * numel(shape)


def _factored_or_full(shape: Shape) -> int:
    """``m + n`` for the ``dim0 x prod(rest)`` view of a 2+-dim shape, else ``numel``."""
    md = matrix_dims(shape)
    return numel(shape) if md is None else md[0] + md[1]


def _hfac_numel(shape: Shape) -> int:
    """``2(m + n)`` of the ``dim0 x prod(rest)`` view; 0-d/1-d shapes as one row (``m = 1``)."""
    md = matrix_dims(shape) or (1, numel(shape))
    return 2 * (md[0] + md[1])


def basis_numel(shape: Shape, two_sided: bool, max_precond_dim: int = 10000) -> int:
    """Elements of the rotation bases kept for a parameter of ``shape`` (fallbacks included)."""
    left, right = rotation_mode(shape, two_sided, max_precond_dim)
    dims = matrix_dims(shape)
    if dims is None:
        return 0
    m, n = dims
    return (m * m if left else 0) + (n * n if right else 0)


def _torch_adafactor_numel(shape: Shape) -> int:
    # torch.optim.Adafactor factors the last two dims: row_var drops the last, col_var the
    # second to last; tensors with fewer than 2 dims keep a full variance. Zero-size
    # parameters are skipped (hamopt's subclass) and keep no state at all.
    if numel(shape) == 0:
        return 0
    if len(shape) < 2:
        return numel(shape)
    row = list(shape)
    row[-1] = 1
    col = list(shape)
    col[-2] = 1
    return numel(tuple(row)) + numel(tuple(col))


# ---------------------------------------------------------------------- factories
def _lookahead(params: Any, base: str | type = "adamw", k: int = 5, alpha: float = 0.5,
               **base_kwargs: Any) -> Lookahead:
    """``Lookahead(create(base, params, **base_kwargs), k, alpha)``; ``base`` is a registry name
    or an optimizer class. Keyword arguments set to ``None`` are dropped, so the entry's AdamW
    defaults can be switched off for another base: ``create("lookahead", ps, base="sgd",
    betas=None, eps=None, lr=0.1)``."""
    base_kwargs = {key: v for key, v in base_kwargs.items() if v is not None}
    inner = create(base, params, **base_kwargs) if isinstance(base, str) else base(params, **base_kwargs)
    return Lookahead(inner, k=k, alpha=alpha)


# ---------------------------------------------------------------------- the table
_LECTURE = _lecture.LECTURE
_TORCH = _classic.torch_optimizer
_SVD_TEST = dict(svd_interval=3)

_TABLE = [
    # -- preconditioner diagonalization (seed 001)
    OptimizerInfo(
        name="adadiag", factory=AdaDiag, paper=f"{_adadiag.PAPER}, Algorithm 1 (one-sided)", family="adadiag",
        memory="m^2 + 2mn (m the smaller side; vectors: 2n)",
        state_numel=lambda s: basis_numel(s, False) + 2 * numel(s), needs_svd=True, test_lr=0.05,
        summary="Adam in the one-sided basis of a periodic SVD of the gradient", test_kwargs=_SVD_TEST),
    OptimizerInfo(
        name="adadiag++", factory=AdaDiag, overrides=dict(two_sided=True),
        paper=f"{_adadiag.PAPER}, Algorithm 1 (two-sided)", family="adadiag",
        memory="(m+n)^2 (side > 10000: one-sided m^2 + 2mn; vectors: 2n)",
        state_numel=lambda s: basis_numel(s, True) + 2 * numel(s), needs_svd=True, test_lr=0.05,
        summary="Adam in the two-sided basis P^T G Q of a periodic SVD of the gradient", test_kwargs=_SVD_TEST),
    OptimizerInfo(
        name="adafacdiag", factory=AdafacDiag, paper=f"{_adadiag.PAPER}, Appendix A, Algorithm 3 (one-sided)",
        family="adadiag", memory="m^2 + m + n (with momentum betas[0] > 0: m^2 + mn + m + n; vectors: n)",
        # registry defaults: betas[0] = 0, no momentum buffer (with momentum add numel(shape))
        state_numel=lambda s: basis_numel(s, False) + _factored_or_full(s), factored=True, needs_svd=True,
        summary="Adafactor in the one-sided basis of a periodic SVD of the gradient", test_lr=0.05,
        test_kwargs=_SVD_TEST),
    OptimizerInfo(
        name="adafacdiag++", factory=AdafacDiag, overrides=dict(two_sided=True),
        paper=f"{_adadiag.PAPER}, Appendix A, Algorithm 3 (two-sided)", family="adadiag",
        memory="m^2 + n^2 + m + n (with momentum: + mn; side > 10000: one-sided; vectors: n)",
        state_numel=lambda s: basis_numel(s, True) + _factored_or_full(s), factored=True, needs_svd=True,
        summary="Adafactor in the two-sided basis P^T G Q of a periodic SVD of the gradient", test_lr=0.05,
        test_kwargs=_SVD_TEST),
    # -- Adaptive Momentum Scaling (seed 003)
    OptimizerInfo(
        name="ams", factory=AMS, paper=f"{_ams.PAPER}, Algorithm 1", family="ams",
        memory="2mn (3mn with betas[2] > 0)", state_numel=_k(2), test_lr=0.05,
        summary="Adaptive Momentum Scaling: Adam direction, sign-tracked mask (phi + lam psi), rescaled lr",
        test_kwargs=dict(misaligned_scale=-0.5, betas=(0.9, 0.999, 0.0)),
        bad_inputs=[(dict(misaligned_scale=float("nan")), "Invalid misaligned_scale: nan"),
                    (dict(betas=(0.9, 0.999, 1.0)), "Invalid beta parameter at index 2: 1.0")]),
    OptimizerInfo(
        name="grams", factory=Grams, paper=f"{_ams.PAPER}, Definition 5.1 / Corollary B.3", family="ams",
        memory="2mn", state_numel=_k(2), test_lr=0.05,
        summary="Grams: sign of the gradient times the magnitude of Adam's update"),
    OptimizerInfo(
        name="cadamw", factory=CAdamW, paper=f"{_ams.PAPER}, Corollary B.2; {_ams.CAUTIOUS}", family="ams",
        memory="2mn", state_numel=_k(2), test_lr=0.05,
        summary="Cautious AdamW: Adam's update masked where it disagrees with the gradient, rescaled"),
    OptimizerInfo(
        name="clion", factory=CLion, paper=f"{_ams.PAPER}, Definition 3.2; {_ams.CAUTIOUS}", family="ams",
        memory="mn", state_numel=_k(1), sign_based=True, test_lr=0.01,
        summary="Cautious Lion: Lion's sign update masked where it disagrees with the gradient, rescaled"),
    # -- the lecture's classics that torch.optim ships (seed 002): configured torch classes
    OptimizerInfo(
        name="sgd", factory=_TORCH("SGD"), paper=f"Robbins and Monro 1951; {_LECTURE}", family="classic",
        defaults=dict(lr=1e-2, momentum=0.0, weight_decay=0.0), memory="0", state_numel=lambda s: 0,
        scalar_bytes=0, summary="plain (mini-batch) stochastic gradient descent; torch.optim.SGD", test_lr=0.01),
    OptimizerInfo(
        name="momentum", factory=_TORCH("SGD"), paper=f"Polyak 1964; {_LECTURE}", family="classic",
        defaults=dict(lr=1e-2, momentum=0.9, weight_decay=0.0), memory="mn", state_numel=_k(1), scalar_bytes=0,
        summary="heavy-ball momentum v = gamma v + g; torch.optim.SGD(momentum=0.9)", test_lr=0.002),
    OptimizerInfo(
        name="nesterov", factory=_TORCH("SGD"), paper=f"Nesterov 1983; Sutskever et al. 2013; {_LECTURE}",
        family="classic", defaults=dict(lr=1e-2, momentum=0.9, nesterov=True, weight_decay=0.0), memory="mn",
        state_numel=_k(1), scalar_bytes=0, summary="Nesterov accelerated gradient; torch.optim.SGD(nesterov=True)",
        test_lr=0.002),
    OptimizerInfo(
        name="adagrad", factory=_TORCH("Adagrad"), paper=f"Duchi, Hazan and Singer, JMLR 2011; {_LECTURE}",
        family="classic", defaults=dict(lr=1e-2, eps=1e-10, weight_decay=0.0), memory="mn", state_numel=_k(1),
        summary="per-coordinate lr from the sum of squared gradients; torch.optim.Adagrad", test_lr=0.5),
    OptimizerInfo(
        name="adadelta", factory=_TORCH("Adadelta"), paper=f"Zeiler 2012, arXiv:1212.5701; {_LECTURE}",
        family="classic", defaults=dict(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0), memory="2mn",
        state_numel=_k(2), test_lr=1.0,
        summary="Adagrad without a global lr (RMS of updates over RMS of grads); torch.optim.Adadelta"),
    OptimizerInfo(
        name="rmsprop", factory=_TORCH("RMSprop"), paper=f"Tieleman and Hinton 2012 (Coursera lecture 6.5); {_LECTURE}",
        family="classic", defaults=dict(lr=1e-3, alpha=0.99, eps=1e-8, weight_decay=0.0), memory="mn",
        state_numel=_k(1), summary="EMA of squared gradients as the denominator; torch.optim.RMSprop", test_lr=0.01),
    OptimizerInfo(
        name="adam", factory=_TORCH("Adam"), paper=f"Kingma and Ba, ICLR 2015, arXiv:1412.6980; {_LECTURE}",
        family="classic", defaults=dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0), memory="2mn",
        state_numel=_k(2), summary="Adam with bias correction; torch.optim.Adam (fused)", test_lr=0.05),
    OptimizerInfo(
        name="adamw", factory=_TORCH("AdamW"), paper=f"Loshchilov and Hutter, ICLR 2019, arXiv:1711.05101; {_LECTURE}",
        family="classic", defaults=dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2), memory="2mn",
        state_numel=_k(2), summary="Adam with decoupled weight decay; torch.optim.AdamW (fused)", test_lr=0.05),
    OptimizerInfo(
        name="adamax", factory=_TORCH("Adamax"), paper=f"Kingma and Ba, ICLR 2015, section 7; {_LECTURE}",
        family="classic", defaults=dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0), memory="2mn",
        state_numel=_k(2), summary="Adam with the infinity norm; torch.optim.Adamax", test_lr=0.05),
    OptimizerInfo(
        name="nadam", factory=_TORCH("NAdam"), paper=f"Dozat, ICLR 2016 workshop; {_LECTURE}", family="classic",
        defaults=dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0), memory="2mn", state_numel=_k(2),
        scalar_bytes=8, summary="Adam with Nesterov momentum; torch.optim.NAdam", test_lr=0.05),
    OptimizerInfo(
        name="radam", factory=_TORCH("RAdam"), paper=f"Liu et al., ICLR 2020, arXiv:1908.03265; {_LECTURE}",
        family="classic", defaults=dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0), memory="2mn",
        state_numel=_k(2), summary="Adam with a rectified variance warm-up; torch.optim.RAdam", test_lr=0.05),
    OptimizerInfo(
        name="amsgrad", factory=_TORCH("Adam", amsgrad=True), paper=f"Reddi, Kale and Kumar, ICLR 2018; {_LECTURE}",
        family="classic", defaults=dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0), memory="3mn",
        state_numel=_k(3), summary="Adam with the running maximum of v; torch.optim.Adam(amsgrad=True)",
        test_lr=0.05),
    OptimizerInfo(
        name="adafactor", factory=_TORCH("Adafactor"),
        paper=f"Shazeer and Stern, ICML 2018, arXiv:1804.04235; {_LECTURE}", family="classic",
        defaults=dict(lr=1e-2, weight_decay=0.0), memory="m+n", state_numel=_torch_adafactor_numel,
        scalar_bytes=lambda shape: 4 if numel(shape) else 0, factored=True, test_lr=0.05,
        summary="factored second moment, relative step; torch.optim.Adafactor"),
    # -- H-Fac and its family (seed 000)
    OptimizerInfo(
        name="adafactor_m", factory=AdafactorM, paper=f"{_hfac.PAPER}, Algorithm 1", family="hfac",
        memory="mn + m + n (m + n with betas[0] = 0; 2 numel for 0-d/1-d)",
        state_numel=lambda s: numel(s) + _factored_or_full(s), factored=True, test_lr=0.05,
        summary="Adafactor with a first moment and bias-corrected decays; betas[0]=0 is Adafactor"),
    OptimizerInfo(
        name="adafactor_m0", factory=AdafactorM, overrides=dict(betas=(0.0, 0.999)),
        paper=f"{_hfac.PAPER}, Algorithm 1 with b1 = 0", family="hfac", memory="m + n (numel for 0-d/1-d)",
        state_numel=_factored_or_full, factored=True, test_lr=0.05,
        summary="Adafactor without momentum as the H-Fac paper runs it: AdafactorM(betas=(0, b2)), fixed lr"),
    OptimizerInfo(
        name="signfsgd", factory=SignFSGD, paper=f"{_hfac.PAPER}, Algorithm 2", family="hfac",
        memory="m + n (numel for 0-d/1-d)", state_numel=_factored_or_full, factored=True, sign_based=True,
        summary="factored (row/column mean) momentum with corrected terms and the sign reshaper", test_lr=0.01,
        bad_inputs=(({"beta": 1.0}, "Invalid beta: 1.0"),)),
    OptimizerInfo(
        name="lionfactor", factory=LionFactor, paper=f"{_hfac.PAPER}, Appendix B, Algorithm 4", family="hfac",
        memory="m + n (numel for 0-d/1-d)", state_numel=_factored_or_full, factored=True, sign_based=True,
        summary="signFSGD with Lion's double-beta scheme on factored momentum", test_lr=0.01),
    OptimizerInfo(
        name="hfac", factory=HFac, paper=f"{_hfac.PAPER}, Algorithm 3", family="hfac",
        memory="2(m + n) (0-d/1-d as 1 x n: 2(n + 1))", state_numel=_hfac_numel, factored=True,
        summary="H-Fac: factored momentum and factored second moment, sublinear memory", test_lr=0.05),
    OptimizerInfo(
        name="adamw_variant", factory=AdamWVariant, paper=f"{_hfac.PAPER}, Appendix C, Algorithm 6", family="hfac",
        memory="2mn", state_numel=_k(2), summary="AdamW variant: EMA of G / (sqrt(V) + eps) as the update",
        test_lr=0.05),
    # -- the lecture's optimizers that torch lacks (seed 002)
    OptimizerInfo(
        name="signsgd", factory=SignSGD,
        paper=f"Bernstein, Wang, Azizzadenesheli and Anandkumar, signSGD, ICML 2018, arXiv:1802.04434; {_LECTURE}",
        family="lecture", memory="0 (mn with momentum > 0: Signum)", state_numel=lambda shape: 0,
        summary="sign of the gradient; momentum > 0 gives Signum (sign of an EMA)", sign_based=True, test_lr=0.01,
        bad_inputs=[(dict(momentum=1.0), "Invalid momentum: 1.0")]),
    OptimizerInfo(
        name="adamod", factory=AdaMod,
        paper=f"Ding, Ren, Luo and Sun, An Adaptive and Momental Bound Method for Stochastic Learning, "
              f"arXiv:1910.12249, Algorithm 1; {_LECTURE}",
        family="lecture", memory="3mn", state_numel=_k(3), test_lr=0.1,
        summary="Adam whose per-coordinate step is bounded by its own long-term average"),
    OptimizerInfo(
        name="diffgrad", factory=DiffGrad,
        paper=f"Dubey et al., diffGrad, IEEE TNNLS 2020, arXiv:1909.11015; {_LECTURE}", family="lecture",
        memory="3mn", state_numel=_k(3), test_lr=0.05,
        summary="Adam times sigmoid(|g_{t-1} - g_t|): slows down where the gradient stops changing"),
    OptimizerInfo(
        name="lookahead", factory=_lookahead,
        paper=f"Zhang, Lucas, Hinton and Ba, Lookahead Optimizer: k steps forward, 1 step back, NeurIPS 2019, "
              f"arXiv:1907.08610; {_LECTURE}",
        family="lecture", defaults=dict(base="adamw", k=5, alpha=0.5, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                                        weight_decay=1e-2),
        memory="3mn (AdamW's 2mn + slow weights mn)", state_numel=_k(3), test_lr=0.05,
        summary="slow weights around any optimizer (here hamopt.create(base), default torch AdamW)",
        bad_inputs=[(dict(k=0), "Invalid k: 0"), (dict(alpha=1.5), "Invalid alpha: 1.5")]),
    OptimizerInfo(
        name="ranger", factory=Ranger,
        paper=f"Wright, Ranger (2019/2020) = RAdam (Liu et al., ICLR 2020) + Lookahead (Zhang et al., NeurIPS 2019) "
              f"+ gradient centralization (Yong et al., ECCV 2020); {_LECTURE}",
        family="lecture", memory="3mn", state_numel=_k(3), test_lr=0.05,
        summary="RAdam + Lookahead (+ gradient centralization)",
        bad_inputs=[(dict(k=0), "Invalid k: 0"), (dict(alpha=1.5), "Invalid alpha: 1.5")]),
    OptimizerInfo(
        name="sophia", factory=Sophia,
        paper=f"Liu, Li, Hall, Liang and Ma, Sophia: A Scalable Stochastic Second-order Optimizer for Language "
              f"Model Pre-training, ICLR 2024, arXiv:2305.14342, Algorithm 3; {_LECTURE}",
        family="lecture", memory="2mn", state_numel=_k(2), needs_hessian=True, step_needs="graph", test_lr=0.05,
        summary="clipped momentum over a diagonal Hessian estimate (Hutchinson or GNB) refreshed every k steps",
        bad_inputs=[(dict(k=0), "Invalid k: 0"), (dict(gamma=0.0), "Invalid gamma: 0.0"),
                    (dict(estimator="newton"), "Invalid estimator: 'newton'")]),
    # -- Lion-K (seed 004)
    OptimizerInfo(
        name="lionk", factory=LionK, paper=f"{_lionk.PAPER}, equation (2), Table 2", family="lionk",
        memory="mn", state_numel=_k(1), test_lr=0.02, test_kwargs=dict(kernel="lp", p=2.0),
        summary="Lion-K: Lion with sign replaced by gradK of a convex kernel "
                "(l1, lp, threshold, topk, huber, callable)",
        bad_inputs=[(dict(kernel="lp", p=None), "LionK kernel 'lp' needs p"),
                    (dict(kernel="lp", p=0.5), "Invalid p for kernel 'lp': 0.5"),
                    (dict(kernel="nope"), "Invalid kernel: 'nope'"),
                    (dict(kernel="topk", p=None, k=0), "Invalid k for kernel 'topk': 0"),
                    (dict(kernel="huber", p=None, e=-1.0), "Invalid e for kernel 'huber': -1.0"),
                    (dict(kernel="threshold", p=None), "LionK kernel 'threshold' needs e"),
                    (dict(kernel="l1", p=2.0), "LionK kernel 'l1' takes no p")]),
    OptimizerInfo(
        name="lion", factory=Lion, paper=f"{_lionk.LION}; {_lionk.PAPER}", family="lionk",
        memory="mn", state_numel=_k(1), sign_based=True, test_lr=0.01,
        summary="Lion: sign of an interpolated momentum, decoupled weight decay (Lion-K with l1)"),
]
for _info in _TABLE:
    register(_info)
