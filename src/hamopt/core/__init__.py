"""The core: list-of-tensor ops, the Transform contract and chain, the Optimizer shell."""

import sys as _sys

from .compiled import compile_step
from .engine import sharding as _sharding
from .optimizer import ChainedOptimizer
from .transform import Chain, StepContext, Transform, chain

__all__ = ["Chain", "ChainedOptimizer", "StepContext", "Transform", "chain", "compile_step"]

# ``hamopt.core.sharding`` moved into the engine (2026-12-08), its only user; the old path imports.
_sys.modules[f"{__name__}.sharding"] = _sharding
