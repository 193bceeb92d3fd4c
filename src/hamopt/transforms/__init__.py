"""Gradient transforms: the primitives every hamopt optimizer is a chain of.

Generic ones live in :mod:`.common`; each paper family adds its own module. See
:mod:`hamopt.core.transform` for the contract a transform follows.
"""

from ..core.transform import BUCKET, ELEMENT, TENSOR, Chain, StepContext, Transform, chain
from . import adadiag, ams, common, factored, lecture, lionk
from .adadiag import *  # noqa: F403
from .ams import *  # noqa: F403
from .common import *  # noqa: F403
from .factored import *  # noqa: F403
from .lecture import *  # noqa: F403
from .lionk import *  # noqa: F403

__all__ = ["BUCKET", "ELEMENT", "TENSOR", "Chain", "StepContext", "Transform", "chain"] + [
    n for m in (adadiag, ams, common, factored, lecture, lionk) for n in m.__all__
]
