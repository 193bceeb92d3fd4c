"""Old hamopt against new, in one process: bit-for-bit results and interleaved step times.

A refactor must leave every optimizer's parameters and state exactly as they were, and its
CPU step time within noise. This loads a second copy of hamopt from another checkout's
``src`` folder (as the package ``hamopt_base``), runs both on the same parameters and
gradients, and

* ``--check``: steps every registry entry (or the names given) both ways for a few steps on
  a small mixed parameter set and reports any parameter or state tensor that differs by a
  single bit;
* otherwise: times each named optimizer's step old and new in the same interleaved rounds on
  a model's shapes (default LLaMA-60M) beside torch's fused AdamW, and prints the medians and
  ratios::

    git worktree add /tmp/base <old-commit>
    OMP_NUM_THREADS=1 python benchmarks/ab_step.py --base /tmp/base/src --rounds 7 lion signfsgd hfac
    python benchmarks/ab_step.py --base /tmp/base/src --check
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType

import torch

import hamopt
from hamopt.bench.shapes import model_shapes


def load_base(src: str) -> ModuleType:
    root = Path(src).resolve() / "hamopt"
    spec = importlib.util.spec_from_file_location("hamopt_base", root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    if spec is None or spec.loader is None:
        raise SystemExit(f"no hamopt package under {src}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["hamopt_base"] = mod
    spec.loader.exec_module(mod)
    return mod


def _check(base: ModuleType, names: list[str], steps: int, chunk: int | None, dtype: torch.dtype) -> int:
    shapes = [(64, 80), (300, 70), (70,), (), (8, 3, 3, 3), (0, 5), (1, 40)]
    bad = 0
    for name in names or hamopt.list_optimizers():
        if name not in base.list_optimizers():
            print(f"{name:16s} new (not in the old version)")
            continue
        info = hamopt.get(name)
        kw = dict(info.test_kwargs)
        g = torch.Generator().manual_seed(0)
        init = [torch.randn(s, generator=g).to(dtype) for s in shapes]
        runs = []
        for lib in (base, hamopt):
            ps = [torch.nn.Parameter(t.clone()) for t in init]
            opt = lib.create(name, ps, **kw)
            if chunk is not None and hasattr(opt, "cpu_chunk_numel"):
                opt.cpu_chunk_numel = chunk
            gg = torch.Generator().manual_seed(1)
            for _ in range(steps):
                loss = sum((p * p).sum() * 0.5 for p in ps) + sum((p.sin()).sum() for p in ps)
                if info.step_needs == "graph":
                    for p in ps:
                        p.grad = None
                    loss.backward(create_graph=True)
                else:
                    opt.zero_grad()
                    loss.backward()
                for p in ps:
                    p.grad.add_((torch.randn(p.shape, generator=gg) * 0.1).to(dtype))
                opt.step()
            runs.append((ps, opt))
        (ps0, o0), (ps1, o1) = runs
        diffs = [i for i, (a, b) in enumerate(zip(ps0, ps1)) if not torch.equal(a, b)]
        for i, (a, b) in enumerate(zip(ps0, ps1)):
            s0, s1 = o0.state[a], o1.state[b]
            if s0.keys() != s1.keys():
                diffs.append(f"state keys {i}")
                continue
            for k in s0:
                x, y = s0[k], s1[k]
                same = torch.equal(torch.as_tensor(x), torch.as_tensor(y)) if isinstance(x, torch.Tensor) else x == y
                if not same:
                    diffs.append(f"{i}:{k}")
        print(f"{name:16s} {'identical' if not diffs else 'DIFFERS ' + str(diffs)}")
        bad += bool(diffs)
    return bad


def _time(base: ModuleType, names: list[str], model: str, rounds: int) -> None:
    g = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=g).requires_grad_() for _, s in model_shapes(model)]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    opts: dict[str, torch.optim.Optimizer] = {"fused": torch.optim.AdamW(ps, lr=1e-6, fused=True)}
    for n in names:
        opts[f"{n} (old)"] = base.create(n, ps, lr=1e-6)
        opts[f"{n} (new)"] = hamopt.create(n, ps, lr=1e-6)
    times: dict[str, list[float]] = {k: [] for k in opts}
    for r in range(rounds + 1):
        for k, o in opts.items():
            t = time.perf_counter()
            o.step()
            if r:
                times[k].append(time.perf_counter() - t)
    fused = statistics.median(times["fused"])
    print(f"{model}, {torch.get_num_threads()} thread(s), median of {rounds} interleaved rounds; "
          f"torch fused AdamW {fused * 1e3:.1f} ms")
    print(f"{'optimizer':16s} {'old ms':>9s} {'new ms':>9s} {'old/fused':>10s} {'new/fused':>10s} {'new/old':>8s}")
    for n in names:
        a, b = statistics.median(times[f"{n} (old)"]), statistics.median(times[f"{n} (new)"])
        print(f"{n:16s} {a * 1e3:9.1f} {b * 1e3:9.1f} {a / fused:10.2f} {b / fused:10.2f} {b / a:8.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*")
    ap.add_argument("--base", required=True, help="the src folder of the old checkout")
    ap.add_argument("--check", action="store_true", help="compare results bit for bit instead of timing")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--chunk", type=int, default=None, help="--check: cpu_chunk_numel of both (pieces)")
    ap.add_argument("--dtype", default="float32", help="--check: parameter dtype")
    ap.add_argument("--model", default="llama60m")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = load_base(args.base)
    if args.check:
        raise SystemExit(1 if _check(base, args.names, args.steps, args.chunk, getattr(torch, args.dtype)) else 0)
    _time(base, args.names or ["lion", "signfsgd", "adafactor_m", "grams", "hfac"], args.model, args.rounds)


if __name__ == "__main__":
    main()
