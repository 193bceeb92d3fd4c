"""Every fast path equals the reference rule it implements (STYLE.md habit 3).

Generated from the registry of fast paths (:func:`hamopt.fast.fast_paths`) and the optimizer
registry (plus a few chains composed of the factored family's transforms, whose fast paths
no registered optimizer runs on its own): for each fast path, every optimizer whose chain
holds a transform the path implements is run twice in float64 on CPU pieces (where the pooled paths apply), once
as it runs by default and once with :func:`hamopt.fast.reference_only`, and the parameters
and every state tensor are compared after many steps. The fast path must actually have run.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import torch

import hamopt
from hamopt.core import transform as T
from hamopt.fast import fast_paths, reference_only


def _members(t: T.Transform) -> list[T.Transform]:
    out = [t]
    for c in t.children():
        out += _members(c)
    return out


def _composed(*middle: Any, **defaults: Any) -> Callable[..., torch.optim.Optimizer]:
    """An optimizer whose chain is ``middle`` + the decoupled-decay apply (H-Fac's defaults)."""
    from hamopt.core.optimizer import ChainedOptimizer
    from hamopt.transforms import apply_decayed_update

    def make(params: Any, **kw: Any) -> torch.optim.Optimizer:
        d = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-30, weight_decay=0.0, clip_threshold=1.0, corrected=True)
        d.update(defaults)
        d.update(kw)
        return ChainedOptimizer(params, d, [*(m() for m in middle), apply_decayed_update()])

    return make


def _extras() -> dict[str, Callable[..., torch.optim.Optimizer]]:
    from hamopt.transforms import (
        add_normalized_factored_momentum,
        clip_by_rms,
        factored_momentum,
        scale_by_ema,
        scale_by_factored_rms,
        scale_by_hfac,
    )

    return {
        # H-Fac as the three transforms scale_by_hfac stands for
        "hfac-composed": _composed(lambda: scale_by_factored_rms(vectors_as_rows=True), clip_by_rms,
                                   lambda: add_normalized_factored_momentum(
                                       0.5, momentum=factored_momentum(vectors_as_rows=True))),
        # updates that are not the gradients reach scale_by_hfac
        "hfac-after-ema": _composed(lambda: scale_by_ema(key="m", corrected=True),
                                    lambda: scale_by_hfac(0.5, vectors_as_rows=True,
                                                          momentum=factored_momentum(vectors_as_rows=True)),
                                    clip_threshold=0.3),
        # Adafactor-m as the two transforms scale_by_clipped_factored_rms stands for
        "adafactor_m-composed": _composed(lambda: scale_by_ema(corrected=True), scale_by_factored_rms, clip_by_rms),
    }


EXTRAS = _extras()


def _create(name: str, params: Any, **kw: Any) -> torch.optim.Optimizer:
    return EXTRAS[name](params, **kw) if name in EXTRAS else hamopt.create(name, params, **kw)


def _cases() -> list[tuple[T.FastPath, str]]:
    p = [torch.nn.Parameter(torch.zeros(2, 3))]
    cases = []
    for fp in fast_paths():
        for name in [*hamopt.list_optimizers(), *EXTRAS]:
            opt = _create(name, p)
            chain = getattr(opt, "transform", None)
            if chain is None:
                continue
            if any(isinstance(m, fp.reference) and type(m).update is fp.reference.update for m in _members(chain)):
                cases.append((fp, name))
    return cases


CASES = _cases()

#: How fast paths with layouts of their own may run, by module (``"cpu"`` for the others:
#: CPU pieces of 500 elements). The factored family's (:mod:`hamopt.fast.factored`): as on the
#: CPU by default; with same-shape matrices stacked into batches and large matrices cut into
#: row blocks of 64 entries, the bucket whole (not in pieces, so same-shape matrices meet); with
#: the plain sums an accelerator uses instead of CPU products. The SVD rotation's
#: (:mod:`hamopt.fast.rotation`): CPU pieces (pooled buffers, one matrix per piece); the bucket
#: whole, so the two 40 x 30 matrices are rotated as one batch (``bmm`` on stacks); per-tensor
#: loops (``foreach=False``) on CPU pieces.
LAYOUTS: dict[str, dict[str, dict[str, Any]]] = {
    "hamopt.fast.factored": {
        "cpu": {},
        "stacked-blocks": {"CPU_STACK_MAX_NUMEL": 1 << 22, "CPU_BLOCK_NUMEL": 64, "chunk": 0},
        "plain-sums": {"reduce_by_matmul": lambda x: False},  # hamopt.core.reductions' switch
    },
    "hamopt.fast.rotation": {
        "cpu": {},
        "batched": {"chunk": 0, "expect_bmm": True},
        "per-tensor": {"foreach": False},
    },
}
LAYOUT_CASES = [(fp, n, lay) for fp, n in CASES for lay in LAYOUTS.get(fp.update.__module__, {"cpu": {}})]


def test_every_fast_path_is_exercised_by_some_optimizer() -> None:
    assert {fp.name for fp in fast_paths()} == {fp.name for fp, _ in CASES}
    assert len(fast_paths()) >= 2


@pytest.mark.parametrize("fp, name, layout", LAYOUT_CASES,
                         ids=[f"{fp.name}-{n}-{lay}" for fp, n, lay in LAYOUT_CASES])
def test_fast_path_equals_its_reference(fp: T.FastPath, name: str, layout: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from hamopt.core import reductions
    from hamopt.fast import factored

    settings = dict(LAYOUTS.get(fp.update.__module__, {}).get(layout, {}))
    chunk = settings.pop("chunk", 500)
    foreach = settings.pop("foreach", True)
    bmms: list[int] | None = [] if settings.pop("expect_bmm", False) else None
    if bmms is not None:
        real_bmm = torch.bmm
        monkeypatch.setattr(torch, "bmm", lambda *a, **k: (bmms.append(1), real_bmm(*a, **k))[1])
    for attr, value in settings.items():
        monkeypatch.setattr(reductions if attr == "reduce_by_matmul" else factored, attr, value)
    calls = []
    counted = dataclasses.replace(fp, update=lambda t, ctx, u: (calls.append(1), fp.update(t, ctx, u))[1])
    monkeypatch.setitem(T._FAST, fp.reference, [counted if x is fp else x for x in T._FAST[fp.reference]])
    info = hamopt.get(name) if name not in EXTRAS else None
    g = torch.Generator().manual_seed(0)
    shapes = [(40, 30), (30, 40), (70,), (), (4, 3, 5), (40, 30), (0, 5)]
    init = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    if info is None:
        kw: dict[str, Any] = {"weight_decay": 0.05}
    else:
        kw = {**info.test_kwargs, "weight_decay": 0.05} if "weight_decay" in info.defaults else dict(info.test_kwargs)
    runs = []
    for reference in (False, True):
        ps = [torch.nn.Parameter(x.clone()) for x in init]
        opt = _create(name, ps, lr=1e-2, **kw, **({} if foreach else {"foreach": False}))
        opt.cpu_chunk_numel = chunk
        gg = torch.Generator().manual_seed(1)
        for _ in range(25):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=gg, dtype=torch.float64)
            if reference:
                with reference_only():
                    opt.step()
            else:
                opt.step()
        runs.append((ps, opt))
        if not reference:
            assert calls, f"{fp.name} never ran for {name}"
            n = len(calls)
            if bmms is not None:
                assert bmms, f"{fp.name} never batched for {name}"
                nb = len(bmms)
    assert len(calls) == n  # none while reference_only
    assert bmms is None or len(bmms) == nb  # the reference never batches
    _assert_same_runs(runs)


def _assert_same_runs(runs: list) -> None:  # type: ignore[type-arg]
    """The fast run and the reference run of ``runs`` agree in every parameter and state tensor."""
    (ps0, o0), (ps1, o1) = runs
    for a, b in zip(ps0, ps1):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
        assert o0.state[a].keys() == o1.state[b].keys()
        for k, v in o0.state[a].items():
            torch.testing.assert_close(v, o1.state[b][k], rtol=1e-13, atol=1e-15, msg=k)


def test_a_subclass_that_rewrites_update_does_not_get_its_parents_fast_path() -> None:
    from hamopt.transforms import ScaleByAdam

    class Mine(ScaleByAdam):
        def update(self, ctx, updates):  # type: ignore[no-untyped-def]
            return updates

    ctx = T.StepContext(group={}, params=[], grads=[], states=[], steps=[], foreach=True,
                        workspace=__import__("hamopt.core.engine.pieces", fromlist=["StepPool"]).StepPool({}))
    assert T._fast_path(Mine(), ctx) is None
    assert T._fast_path(ScaleByAdam(), ctx) is not None


def _compare(make, chunk: int, fp: T.FastPath, monkeypatch: pytest.MonkeyPatch, steps: int = 25) -> None:
    """``make(params)`` run with its fast paths and with the references only, float64, on CPU
    pieces of ``chunk`` elements (0: whole buckets); parameters and every state tensor."""
    calls = []
    counted = dataclasses.replace(fp, update=lambda t, ctx, u: (calls.append(1), fp.update(t, ctx, u))[1])
    monkeypatch.setitem(T._FAST, fp.reference, [counted if x is fp else x for x in T._FAST[fp.reference]])
    g = torch.Generator().manual_seed(0)
    shapes = [(40, 30), (30, 40), (70,), (), (4, 3, 5), (0, 3)]
    init = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    runs = []
    for reference in (False, True):
        ps = [torch.nn.Parameter(x.clone()) for x in init]
        opt = make(ps)
        opt.cpu_chunk_numel = chunk
        gg = torch.Generator().manual_seed(1)
        for _ in range(steps):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=gg, dtype=torch.float64)
            with reference_only() if reference else contextlib.nullcontext():
                opt.step()
        runs.append((ps, opt))
        if not reference:
            assert calls, f"{fp.name} never ran"
            n = len(calls)
    assert len(calls) == n
    _assert_same_runs(runs)


#: AMS's fused step against its reference over the branches the registry's defaults do not
#: reach: every (b3, lam) special case, weight decay, tensor lr and weight decay, per-tensor loops.
AMS_CASES = [dict(betas=(0.9, 0.99, b3), misaligned_scale=lam, weight_decay=wd)
             for b3, lam in [(0.0, -1.0), (0.0, 0.0), (0.0, 1.0), (0.0, 0.5), (0.9, 0.5), (0.9, -1.0), (0.5, 1.0),
                             (0.0, 2.0)]
             for wd in (0.0, 0.1)]
AMS_CASES.append(dict(betas=(0.9, 0.99, 0.5), misaligned_scale=0.3,
                      lr=torch.tensor(0.01, dtype=torch.float64), weight_decay=torch.tensor(0.1, dtype=torch.float64)))
AMS_CASES.append(dict(betas=(0.9, 0.99), misaligned_scale=-1.0,
                      lr=torch.tensor(0.01, dtype=torch.float64), weight_decay=torch.tensor(0.1, dtype=torch.float64)))


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("chunk", [0, 500], ids=["whole", "pieces"])
@pytest.mark.parametrize("kw", AMS_CASES, ids=[f"case{i}" for i in range(len(AMS_CASES))])
def test_ams_fused_equals_its_reference(kw: dict, chunk: int, foreach: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from hamopt.fast.masks import AMS_FUSED

    _compare(lambda ps: hamopt.AMS(ps, **{"lr": 1e-2, **kw}, foreach=foreach), chunk, AMS_FUSED, monkeypatch)


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("mask", ["scale_by_ams", "scale_by_cautious", "scale_by_grams"])
def test_pooled_mask_equals_its_reference(mask: str, foreach: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from hamopt import transforms as tr
    from hamopt.fast.masks import POOLED_MASK

    defaults = dict(lr=1e-2, betas=(0.9, 0.99, 0.5), eps=1e-8, weight_decay=0.1, misaligned_scale=0.3)
    _compare(lambda ps: hamopt.ChainedOptimizer(
        ps, defaults, [tr.scale_by_adam_moments(), getattr(tr, mask)(), tr.apply_decayed_update()], foreach=foreach),
        500, POOLED_MASK, monkeypatch)
