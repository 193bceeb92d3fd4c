"""Gradient transforms: the primitives every hamopt optimizer is a chain of.

One module per idea, named for the idea (the named optimizers in :mod:`hamopt.optim` are
grouped by paper instead):

- :mod:`.common`    Adam's moments, an EMA, sign, RMS clipping, weight decay, the learning
  rate and the final apply ``p <- p (1 - lr wd) - lr u``
- :mod:`.factored`  factored first and second moments and their reshapers (seed 000)
- :mod:`.rotation`  the periodic SVD rotation around an element-wise rule (seed 001)
- :mod:`.adaptive`  RAdam's rectification, AdaMod, diffGrad, Sophia, gradient
  centralization, Lookahead's sync (seed 002)
- :mod:`.masks`     the cautious and Grams masks and AMS's misalignment mask (seed 003)
- :mod:`.kernels`   Lion-K: the reshaping ``nabla K`` of a convex kernel ``K`` (seed 004)

Before 2026-12-08 the last four were named ``adadiag``, ``lecture``, ``ams`` and ``lionk``,
the names of the optimizer modules; those module paths still import (aliases). See
:mod:`hamopt.core.transform` for the contract a transform follows. This package exports the
transforms, their factories, the Lion-K kernels and the contract's names; the helpers the
family modules use internally (row and column sums, norms, ...) stay in those modules.
"""

import sys as _sys
import warnings as _warnings
from typing import Any as _Any

from ..core.transform import BUCKET, ELEMENT, TENSOR, Chain, StepContext, Transform, chain
from . import adaptive, common, factored, kernels, masks, rotation
from .adaptive import *  # noqa: F403
from .common import *  # noqa: F403
from .factored import *  # noqa: F403
from .kernels import *  # noqa: F403
from .masks import *  # noqa: F403
from .rotation import *  # noqa: F403

#: The modules' names before 2026-12-08 (the optimizer modules' names): ``import
#: hamopt.transforms.adadiag`` and pickles that name it still work.
_OLD_NAMES = {"adadiag": rotation, "ams": masks, "lecture": adaptive, "lionk": kernels}
for _old, _mod in _OLD_NAMES.items():
    _sys.modules[f"{__name__}.{_old}"] = _mod

#: Helpers that this package exported in 0.1.0 (importable from here with a warning; their
#: home is the module named).
_HELPERS = {
    "check_ams_betas": masks, "tensor_sums": masks, "rotation_mode": rotation, "rms_clip_": common,
    "holds_squares": factored, "is_factored": factored, "row_col_sums": factored,
    "row_sums_of_squares": factored, "scaled_row_sums_of_squares": factored, "vector_sums": factored,
    "hutchinson_probe": adaptive, "row_mean": adaptive, "tensor_norms": kernels,
}
for _name in _HELPERS:
    globals().pop(_name, None)

__all__ = ["BUCKET", "ELEMENT", "TENSOR", "Chain", "StepContext", "Transform", "chain"] + [
    n for m in (adaptive, common, factored, kernels, masks, rotation) for n in m.__all__ if n not in _HELPERS
]


def __getattr__(name: str) -> _Any:
    if name in _OLD_NAMES:  # the attribute of the package, as ``from hamopt.transforms import adadiag``
        return _OLD_NAMES[name]
    mod = _HELPERS.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _warnings.warn(f"hamopt.transforms.{name} is a helper, not a transform; import it from {mod.__name__}",
                   DeprecationWarning, stacklevel=2)
    return getattr(mod, name)
