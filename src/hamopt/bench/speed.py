"""Optimizer-step time on a model's parameter shapes (``hamopt speed``).

For every optimizer: float32 parameters of the model's shapes with fixed random gradients,
a few warm-up steps, then timed ``optimizer.step()`` calls (``torch.cuda.synchronize`` around
each on CUDA); the median step time is reported. The same run measures

* ``torch.optim.AdamW`` with ``foreach=True`` and with ``fused=True`` (the ratio columns),
* the memory bandwidth (a large tensor copy, read + write), and the effective GB/s of each
  step: the bytes a step must touch at least (parameters read and written, gradients read,
  optimizer state read and written, the state size measured by :func:`hamopt.state_bytes`)
  divided by the step time,
* the aten operations of one more (untimed) step, ``ops`` (``compute`` and ``foreach``):
  on a GPU each compute op is a kernel launch, so this column predicts the launch-bound
  part of the step on machines without one,
* peer implementations when installed (``pytorch_optimizer``, ``lion_pytorch``, ``grams``),
  as rows labelled ``peer:<module>.<Class>`` with their own default hyperparameters.

Optimizers whose registry entry needs an SVD (``needs_svd``) are timed twice: with
``svd_interval=1`` (every step recomputes the bases: the SVD step) and with a huge interval
(the plain step); the amortized step at interval ``T`` is ``plain + (svd - plain) / T``.
Optimizers with ``step_needs == "graph"`` (Sophia) get their gradient from a real
``backward(create_graph=True)`` before each step, outside the timed region.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..memory import state_bytes
from ..registry import OptimizerInfo
from .common import fill_grads, make_params
from .shapes import ModelShapes, total_params

__all__ = ["PEERS", "Peer", "count_step_ops", "measure_bandwidth", "speed_table", "time_optimizer"]


@dataclass(frozen=True)
class Peer:
    """A peer implementation timed beside ours."""

    module: str
    cls: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    graph: bool = False
    ours: str = ""  # the registry name implementing the same rule, for the reader

    @property
    def label(self) -> str:
        return f"peer:{self.module}.{self.cls}"

    def available(self) -> bool:
        try:
            return importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):
            return False

    def factory(self) -> Callable[..., torch.optim.Optimizer]:
        cls = getattr(importlib.import_module(self.module), self.cls)
        return lambda params: cls(params, **self.kwargs)


PEERS: tuple[Peer, ...] = (
    Peer("pytorch_optimizer", "AdaFactor", ours="adafactor_m"),
    Peer("pytorch_optimizer", "Lion", ours="lion"),
    Peer("pytorch_optimizer", "Grams", ours="grams"),
    Peer("pytorch_optimizer", "SOAP", ours="adadiag++"),
    Peer("pytorch_optimizer", "AdaMod", ours="adamod"),
    Peer("pytorch_optimizer", "DiffGrad", ours="diffgrad"),
    Peer("pytorch_optimizer", "SophiaH", graph=True, ours="sophia"),
    Peer("lion_pytorch", "Lion", ours="lion"),
    Peer("grams", "Grams", ours="grams"),
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_bandwidth(device: str | torch.device = "cpu", nbytes: int | None = None, repeat: int = 10) -> float:
    """Memory bandwidth in GB/s (1e9 bytes/s) from a large tensor copy (read + write)."""
    device = torch.device(device)
    if nbytes is None:
        nbytes = (1 << 30) if device.type == "cuda" else (128 << 20)
    n = nbytes // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        times.append(time.perf_counter() - t0)
    del src, dst
    return 2 * n * 4 / statistics.median(times) / 1e9


_VIEW_OPS = frozenset({
    "alias", "as_strided", "detach", "expand", "permute", "reshape", "select", "slice", "split",
    "squeeze", "t", "transpose", "unbind", "unsqueeze", "view", "_unsafe_view", "lift_fresh",
    "_record_function_enter_new", "_record_function_exit",
})


def count_step_ops(opt: torch.optim.Optimizer) -> dict[str, int]:
    """The aten operations one ``opt.step()`` dispatches (run it once more, untimed).

    ``compute`` counts operations that launch work (on a GPU each is a kernel launch, about
    5-10 us of host time; a ``torch._foreach_*`` op is one launch for a whole list), of which
    ``foreach`` are multi-tensor ops; views and profiler markers are not counted. The count
    does not depend on the device or on timing noise, so it compares optimizers on a machine
    without a GPU. hamopt's CPU pieces (``cpu_chunk_numel``) are off while counting, so the
    count is the whole-bucket step a GPU runs.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    counts = {"compute": 0, "foreach": 0}

    class _Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            name = func.overloadpacket.__name__
            if name not in _VIEW_OPS:
                counts["compute"] += 1
                counts["foreach"] += name.startswith("_foreach")
            return func(*args, **(kwargs or {}))

    chunk = opt.__dict__.get("cpu_chunk_numel")
    if hasattr(opt, "cpu_chunk_numel"):
        opt.cpu_chunk_numel = 0  # type: ignore[attr-defined]
    try:
        with _Count():
            opt.step()
    finally:
        if chunk is None:
            opt.__dict__.pop("cpu_chunk_numel", None)
        else:
            opt.cpu_chunk_numel = chunk  # type: ignore[attr-defined]
    return counts


def time_optimizer(factory: Callable[[list[torch.Tensor]], torch.optim.Optimizer], shapes: ModelShapes,
                   device: str | torch.device = "cpu", steps: int = 10, warmup: int = 3, repeat: int = 3,
                   graph: bool = False, count_ops: bool = False) -> dict[str, Any]:
    """Per-step times (seconds) of ``factory(params)`` on ``shapes``, its state bytes and
    (``count_ops``) the operations of one more step (:func:`count_step_ops`)."""
    device = torch.device(device)
    params = make_params([s for _, s in shapes], device=device)
    offsets = fill_grads(params, graph)
    opt = factory(params)
    times: list[float] = []
    for i in range(warmup + steps * repeat):
        if graph:
            fill_grads(params, True, offsets=offsets)
        _sync(device)
        t0 = time.perf_counter()
        opt.step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    ops = None
    if count_ops:
        if graph:
            fill_grads(params, True, offsets=offsets)
        ops = count_step_ops(opt)
    nbytes = state_bytes(opt)
    finite = all(bool(torch.isfinite(p).all()) for p in params)
    del opt, params, offsets
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return dict(times=times, state_bytes=nbytes, finite=finite, ops=ops)


def _interval_key(info: OptimizerInfo) -> str | None:
    if "svd_interval" in info.defaults:
        return "svd_interval"
    for k in info.defaults:
        if "interval" in k:
            return k
    return None


def speed_table(shapes: ModelShapes, optimizers: Sequence[OptimizerInfo], device: str = "cpu",
                steps: int = 10, warmup: int = 3, repeat: int = 3, peers: bool = True,
                svd_interval: int = 200, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Median step time per optimizer, effective GB/s and ratios to AdamW (see module doc)."""
    dev = torch.device(device)
    n_params = total_params(shapes)
    pbytes = n_params * 4
    bw = measure_bandwidth(dev)
    say = progress or (lambda s: None)
    kw = dict(device=dev, steps=steps, warmup=warmup, repeat=repeat)

    entries: list[tuple[str, str, Callable[..., Any], bool, OptimizerInfo | None, str]] = [
        ("torch:AdamW(foreach)", "baseline",
         lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True), False, None, ""),
        ("torch:AdamW(fused)", "baseline",
         lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True), False, None, ""),
    ]
    for info in optimizers:
        entries.append((info.name, "hamopt", info.create, info.step_needs == "graph", info, info.family))
    if peers:
        for peer in PEERS:
            if peer.available():
                entries.append((peer.label, "peer", peer.factory(), peer.graph, None, peer.ours))

    rows: list[dict[str, Any]] = []
    for label, kind, factory, graph, info, note in entries:
        say(label)
        row: dict[str, Any] = dict(name=label, kind=kind, note=note, error=None, svd=None)
        try:
            key = _interval_key(info) if info is not None and info.needs_svd else None
            if key is not None:
                # The plain step must still rotate: take the first SVD at step 1 (two-sided
                # variants default to their first SVD at step T, which a huge T never reaches).
                first = {"first_svd_step": 1} if "first_svd_step" in info.defaults else {}
                plain = time_optimizer(lambda ps, f=factory, k=key, e=first: f(ps, **{k: 10**9}, **e), shapes,
                                       graph=graph, count_ops=True, **kw)
                svd = time_optimizer(lambda ps, f=factory, k=key: f(ps, **{k: 1}), shapes, graph=graph, **kw)
                p_ms = statistics.median(plain["times"]) * 1e3
                s_ms = statistics.median(svd["times"]) * 1e3
                med = p_ms + (s_ms - p_ms) / svd_interval
                row["svd"] = dict(key=key, interval=svd_interval, svd_step_ms=s_ms, plain_step_ms=p_ms,
                                  amortized_ms=med)
                res = plain
                times = plain["times"]
            else:
                res = time_optimizer(factory, shapes, graph=graph, count_ops=True, **kw)
                times = res["times"]
                med = statistics.median(times) * 1e3
            q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0] * 1e3] * 3
            touched = 3 * pbytes + 2 * res["state_bytes"]
            gbs = touched / (med / 1e3) / 1e9 if med > 0 else float("nan")
            row.update(median_ms=med, p25_ms=q[0] * 1e3, p75_ms=q[2] * 1e3, state_bytes=res["state_bytes"],
                       bytes_touched=touched, gbs=gbs, frac_bandwidth=gbs / bw, finite=res["finite"],
                       ops=res["ops"])
        except Exception as e:  # one broken optimizer is a row with an error, not a crash
            row["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        rows.append(row)

    base = {r["name"]: r.get("median_ms") for r in rows if r["kind"] == "baseline"}
    for r in rows:
        m = r.get("median_ms")
        for col, b in (("vs_adamw_foreach", base.get("torch:AdamW(foreach)")),
                       ("vs_adamw_fused", base.get("torch:AdamW(fused)"))):
            r[col] = (m / b) if (m is not None and b) else None
    info_dev = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    return dict(device=str(dev), device_name=info_dev, torch=torch.__version__, params=n_params,
                param_bytes=pbytes, bandwidth_gbs=bw, steps=steps, warmup=warmup, repeat=repeat,
                svd_interval=svd_interval, rows=rows)
