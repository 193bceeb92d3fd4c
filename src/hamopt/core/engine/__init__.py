"""The engine: how a step runs, apart from what it computes.

Whole buckets, CPU pieces with a step-long buffer pool (:mod:`.pieces`), gathered FSDP2
shards (:mod:`.gathered`), the step counters (:mod:`.counters`) and the compute dtype
(:mod:`.runner`). It never names a concrete transform: transforms declare what it needs
(:meth:`~hamopt.core.transform.Transform.granularity`, :meth:`~hamopt.core.transform.Transform.on_shards`,
:attr:`~hamopt.core.transform.Transform.applies`) and never import it.
"""

from .runner import Engine, apply_chain, compute_dtype, is_compiling

__all__ = ["Engine", "apply_chain", "compute_dtype", "is_compiling"]
