"""Helpers shared by ``hamopt memory``, ``hamopt speed`` and ``hamopt bench``."""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from ..memory import fmt_bytes
from ..registry import OptimizerInfo, get, list_optimizers

__all__ = ["atomic_write", "fill_grads", "fmt_bytes", "make_params", "missing_extra", "resolve_optimizers"]


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename, so a
    reader never sees a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def missing_extra(module: str) -> str:
    return f"{module} is needed for this command: pip install hamopt[bench]"


def resolve_optimizers(names: Sequence[str] | None) -> list[OptimizerInfo]:
    """Registry entries for ``names`` (comma-separated items allowed; ``None``/empty: all).

    Raises ``ValueError`` naming an unknown optimizer (with the registry's suggestions).
    """
    if not names:
        return [get(n) for n in list_optimizers()]
    flat = [n.strip() for item in names for n in str(item).split(",") if n.strip()]
    out: list[OptimizerInfo] = []
    for n in flat:
        info = get(n)
        if info not in out:
            out.append(info)
    return out


def make_params(shapes: Sequence[tuple[int, ...]], device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32, seed: int = 0) -> list[Tensor]:
    """Leaf tensors of ``shapes`` filled with N(0, 0.02^2) (a typical init scale)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for s in shapes:
        t = (torch.randn(s, generator=gen) * 0.02).to(device=device, dtype=dtype)
        out.append(t.requires_grad_(True))
    return out


def fill_grads(params: Sequence[Tensor], graph: bool, seed: int = 0,
               offsets: Sequence[Tensor] | None = None) -> list[Tensor] | None:
    """Give every parameter a gradient.

    ``graph=False``: ``p.grad`` is a fixed random tensor (no autograd work).
    ``graph=True`` (optimizers whose registry entry has ``step_needs == "graph"``, e.g. Sophia's
    Hutchinson estimate): the gradient of ``sum(0.5 ||p||^2 + <b, p>)`` is computed with
    ``create_graph=True``, so Hessian-vector products inside ``step`` work (the Hessian is
    the identity). ``offsets`` are the ``b`` tensors (made once and returned when ``None``).
    """
    if not graph:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(device=p.device, dtype=p.dtype)
        return None
    if offsets is None:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        offsets = [torch.randn(p.shape, generator=gen).to(device=p.device, dtype=p.dtype) for p in params]
    for p in params:
        p.grad = None
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
        loss = sum((0.5 * (p * p).sum() + (p * b).sum() for p, b in zip(params, offsets)), torch.zeros(()))
        loss.backward(create_graph=True)
    return list(offsets)
