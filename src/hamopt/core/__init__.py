"""The core: list-of-tensor ops, the Transform contract and chain, the Optimizer shell."""

from .compiled import compile_step
from .optimizer import ChainedOptimizer
from .transform import Chain, StepContext, Transform, chain

__all__ = ["Chain", "ChainedOptimizer", "StepContext", "Transform", "chain", "compile_step"]
