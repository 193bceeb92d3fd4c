"""Benchmarks: ``hamopt bench`` (tasks, tuning, report), ``hamopt speed``, ``hamopt memory``.

``hamopt.bench.compare(build_model, loss_fn, data, optimizers=[...], budget=...)`` runs the
same protocol as ``hamopt bench`` on your own model and data. Heavy optional dependencies
(matplotlib, tqdm, scikit-learn) are imported only by the parts that need them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["compare"]


def compare(*args: Any, **kwargs: Any) -> Any:
    """See :func:`hamopt.bench.runner.compare`."""
    from .runner import compare as _compare

    return _compare(*args, **kwargs)
