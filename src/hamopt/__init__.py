"""hamopt: memory-lean, theory-backed PyTorch optimizers, and the tools to measure them.

    >>> import torch, hamopt
    >>> model = torch.nn.Linear(4, 2)
    >>> opt = hamopt.create("adamw", model.parameters(), lr=1e-3)
    >>> hamopt.state_bytes(opt)
    0

The package holds a small core (:mod:`hamopt.core`: transforms on lists of tensors, a
chain, and one Optimizer shell), the transforms (:mod:`hamopt.transforms`), the named
optimizers (:mod:`hamopt.optim`, one module per paper family), the registry
(:func:`create`, :func:`list_optimizers`), memory accounting (:func:`state_bytes`) and the
``hamopt`` command line tool (:mod:`hamopt.cli`).
"""

from . import fast, transforms  # fast: registers the fast paths of the transforms
from ._version import __version__
from .core import Chain, ChainedOptimizer, StepContext, Transform, chain, compile_step
from .core.optimizer import enable_stochastic_rounding
from .core.rounding import stochastic_round_to_bf16
from .groups import PartitionedOptimizer, describe, param_groups, partition, select
from .memory import expected_state_bytes, state_bytes
from .optim import *  # noqa: F403
from .optim import __all__ as _optim_all
from .registry import OptimizerInfo, create, get, list_optimizers, register

__all__ = [
    "Chain",
    "ChainedOptimizer",
    "OptimizerInfo",
    "PartitionedOptimizer",
    "StepContext",
    "Transform",
    "__version__",
    "chain",
    "compile_step",
    "create",
    "describe",
    "enable_stochastic_rounding",
    "expected_state_bytes",
    "fast",
    "get",
    "list_optimizers",
    "param_groups",
    "partition",
    "register",
    "select",
    "state_bytes",
    "stochastic_round_to_bf16",
    "transforms",
    *_optim_all,
]
