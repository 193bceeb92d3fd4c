"""Which gradients are not finite, decided the same on every rank.

The policy (skip the group's step, or raise naming the parameter) is the optimizer's
(:class:`hamopt.core.optimizer.ChainedOptimizer`, group key ``nonfinite``); finding the
non-finite gradients with one host synchronisation, and under FSDP2 making every rank take
the same decision, is how a step runs, so it lives here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from . import sharding

__all__ = ["find_nonfinite"]


def find_nonfinite(groups: Sequence[dict[str, Any]], checked: Sequence[int]) -> tuple[list[tuple[int, int]], set[int]]:
    """The gradients of the groups ``checked`` (indices into ``groups``) that hold a NaN or an
    inf, as ``(group, index in the group)`` pairs, and the groups whose step must not be
    taken: those with such a gradient on this rank or, for sharded parameters, on any rank
    of their mesh (one tiny all-reduce per checked group)."""
    flags: list[tuple[int, int, Tensor]] = []  # (group, index in the group, all finite)
    for i in checked:
        for j, p in enumerate(groups[i]["params"]):
            if p.grad is not None:
                g = sharding.local(p.grad)
                flags.append((i, j, torch.isfinite(g.coalesce().values() if g.is_sparse else g).all()))
    dev = flags[0][2].device if flags else None
    fine = torch.stack([f.to(dev) for *_, f in flags]).tolist() if flags else []  # the one sync
    bad = [(i, j) for (i, j, _), ok in zip(flags, fine) if not ok]
    skipped = {i for i, _ in bad}
    for i in checked:  # FSDP2: every rank must take the same decision
        ref = next((p for p in groups[i]["params"] if sharding.is_sharded(p)), None)
        if ref is not None and not sharding.all_agree(i not in skipped, ref):
            skipped.add(i)
    return bad, skipped
