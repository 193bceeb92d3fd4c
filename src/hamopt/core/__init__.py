"""The core: list-of-tensor ops, the Transform contract and chain, the Optimizer shell."""

from .optimizer import ChainedOptimizer
from .transform import Chain, StepContext, Transform, chain

__all__ = ["Chain", "ChainedOptimizer", "StepContext", "Transform", "chain"]
