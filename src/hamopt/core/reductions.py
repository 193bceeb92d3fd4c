"""Row and column reductions of matrices (and of ``k x m x n`` stacks of them).

The factored rules (:mod:`hamopt.transforms.factored`) state them as plain sums; the fast
paths (:mod:`hamopt.fast.factored`) use these, which on the CPU compute column sums as a
product with a vector (several times faster there than ``sum(dim=-2)``) and elsewhere as
plain sums (exact whatever the TF32 matmul setting on CUDA). :func:`reduce_by_matmul`
decides; tests switch it to cover both branches on the CPU.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["holds_squares", "reduce_by_matmul", "row_col_sums", "row_sums_of_squares",
           "scaled_row_sums_of_squares", "vector_sums"]


def reduce_by_matmul(x: Tensor) -> bool:
    """Whether reductions along rows use a product with a vector: on the CPU, where it is
    several times faster than ``sum(dim=-2)``; elsewhere plain sums, exact whatever the
    TF32 matmul setting (tests switch this to cover both branches on the CPU)."""
    return x.device.type == "cpu" and x.dtype.is_floating_point


def row_col_sums(x: Tensor, square: bool = False, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Row sums ``X 1_n`` and column sums ``X^T 1_m`` of a matrix ``X`` (``m x n``) or of a
    stack of them (``k x m x n``, giving ``k x m`` and ``k x n``); of ``X^2`` with ``square=True``.

    On the CPU, column sums are a product with ``1_m`` (``sum(dim=-2)`` and
    ``vector_norm(dim=-2)`` are several times slower there) and with ``square=True`` the
    squares are first written to ``out`` (a tensor of ``x``'s shape that the caller owns;
    :func:`holds_squares` tells it whether ``out`` now holds ``X^2``). Elsewhere the sums are
    plain reductions (``vector_norm`` for squares: one read, no write), exact whatever the
    TF32 matmul setting on CUDA. Zero-size matrices give zero sums.
    """
    if square and not reduce_by_matmul(x):
        return (torch.linalg.vector_norm(x, dim=-1).square_(),
                torch.linalg.vector_norm(x, dim=-2).square_())
    if square:
        x = torch.mul(x, x, out=out) if out is not None else x * x
    rows = x.sum(dim=-1)
    if reduce_by_matmul(x):
        cols = torch.matmul(x.new_ones(x.shape[-2]), x)
    else:
        cols = x.sum(dim=-2)
    return rows, cols


def holds_squares(x: Tensor) -> bool:
    """Whether ``row_col_sums(x, square=True, out=buf)`` leaves ``X^2`` in ``buf``."""
    return reduce_by_matmul(x)


def row_sums_of_squares(x: Tensor) -> Tensor:
    """``X^2 1_n`` of a matrix ``X`` (``m x n``) or of a stack (``k x m x n``, giving ``k x m``),
    without a temporary."""
    return torch.linalg.vector_norm(x, dim=-1).square_()


def scaled_row_sums_of_squares(x: Tensor, w: Tensor, squares: Tensor | None = None,
                               out: Tensor | None = None) -> Tensor:
    """``sum_j (X_ij w_j)^2`` per row of a matrix ``X`` (``m x n``) and a vector ``w`` (``n``),
    or of stacks of them (``k x m x n`` and ``k x n``, giving ``k x m``).

    Given ``squares = X^2`` (kept on the CPU, see :func:`holds_squares`) it is one product
    ``X^2 w^2``; otherwise ``X w^T`` is written to ``out`` (which the caller owns) and its
    row norms are taken.
    """
    if squares is not None:
        return torch.matmul(squares, (w * w).unsqueeze(-1)).squeeze(-1)
    y = torch.mul(x, w.unsqueeze(-2), out=out) if out is not None else x * w.unsqueeze(-2)
    return row_sums_of_squares(y)


def vector_sums(v: Tensor) -> Tensor:
    """``1^T r`` of a vector ``r`` (or of each row of a stack ``k x m``, kept as ``k x 1``)."""
    return v.sum(dim=-1, keepdim=True)
