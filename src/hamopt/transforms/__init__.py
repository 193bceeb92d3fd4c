"""Gradient transforms: the primitives every hamopt optimizer is a chain of.

Generic ones live in :mod:`.common`; each paper family adds its own module. See
:mod:`hamopt.core.transform` for the contract a transform follows. This package exports the
transforms, their factories, the Lion-K kernels and the contract's names; the helpers the
family modules use internally (row and column sums, norms, ...) stay in those modules.
"""

import warnings as _warnings
from typing import Any as _Any

from ..core.transform import BUCKET, ELEMENT, TENSOR, Chain, StepContext, Transform, chain
from . import adadiag, ams, common, factored, lecture, lionk
from .adadiag import *  # noqa: F403
from .ams import *  # noqa: F403
from .common import *  # noqa: F403
from .factored import *  # noqa: F403
from .lecture import *  # noqa: F403
from .lionk import *  # noqa: F403

#: Helpers that this package exported in 0.1.0 (importable from here with a warning; their
#: home is the module named).
_HELPERS = {
    "check_ams_betas": ams, "tensor_sums": ams, "rotation_mode": adadiag, "rms_clip_": common,
    "holds_squares": factored, "is_factored": factored, "row_col_sums": factored,
    "row_sums_of_squares": factored, "scaled_row_sums_of_squares": factored, "vector_sums": factored,
    "hutchinson_probe": lecture, "row_mean": lecture, "tensor_norms": lionk,
}
for _name in _HELPERS:
    globals().pop(_name, None)

__all__ = ["BUCKET", "ELEMENT", "TENSOR", "Chain", "StepContext", "Transform", "chain"] + [
    n for m in (adadiag, ams, common, factored, lecture, lionk) for n in m.__all__ if n not in _HELPERS
]


def __getattr__(name: str) -> _Any:
    mod = _HELPERS.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _warnings.warn(f"hamopt.transforms.{name} is a helper, not a transform; import it from {mod.__name__}",
                   DeprecationWarning, stacklevel=2)
    return getattr(mod, name)
