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
from .core import Chain, ChainedOptimizer, StepContext, Transform, chain, compile_step
from .memory import expected_state_bytes, state_bytes
from .optim import *  # noqa: F403
from .optim import __all__ as _optim_all
from .registry import OptimizerInfo, create, get, list_optimizers, register

__version__ = "0.1.0"

__all__ = [
    "Chain",
    "ChainedOptimizer",
    "OptimizerInfo",
    "StepContext",
    "Transform",
    "__version__",
    "chain",
    "compile_step",
    "create",
    "expected_state_bytes",
    "fast",
    "get",
    "list_optimizers",
    "register",
    "state_bytes",
    "transforms",
    *_optim_all,
]
