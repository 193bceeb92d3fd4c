"""Fast implementations of hamopt's transforms, each beside the rule it implements.

A transform's ``update`` is the reference: the paper's rule, written to be read. The
modules here register :class:`~hamopt.core.transform.FastPath` objects that compute the
same rule faster where they apply (batched, blocked, or with buffers from the step's pool on
CPU pieces); :meth:`~hamopt.core.transform.Transform.run` picks them automatically, and
:func:`~hamopt.core.transform.reference_only` turns them off. Each module names the
reference it implements; ``tests/test_fast_paths.py`` compares every registered fast path
with its reference over many steps, parameters and every state tensor.

Each module has the name of the transform module whose rules it implements:

- :mod:`.rotation` ``ScaleBySvdRotation`` (AdaDiag's SVD rotation): same-shape matrices rotated in
  batches (``bmm`` on stacks), the products in the step's pooled buffers
- :mod:`.adam`  ``ScaleByAdam`` (in :mod:`hamopt.transforms.common`) with its denominator and
  ratio in pooled buffers (CPU pieces)
- :mod:`.masks` ``ApplyAmsUpdate`` fused (merged multiplies, pooled temporaries); ``ScaleByAms``'s
  mask temporary in a pooled buffer (CPU pieces)
- :mod:`.factored` the factored family (H-Fac paper): batches, CPU reductions and row blocks,
  and the fused Adafactor and H-Fac directions

(Before 2026-12-08 ``rotation`` and ``masks`` were ``adadiag`` and ``ams``; those paths still import.)
"""

import sys as _sys

from ..core.transform import fast_paths, reference_only
from . import adam, factored, masks, rotation

for _old, _mod in {"adadiag": rotation, "ams": masks}.items():
    _sys.modules[f"{__name__}.{_old}"] = _mod

__all__ = ["adam", "factored", "fast_paths", "masks", "reference_only", "rotation"]
