"""Low-precision parameters with float32 optimizer state on the charlm task.

The task of ``hamopt bench`` (``hamopt.bench.tasks``, ``charlm``: a LLaMA-style byte-level LM,
d 48, 2 layers, context 32, batch 16, 200 steps) with the whole model in float32, bfloat16
or float16. hamopt keeps the state of bf16/fp16 parameters in float32 and does the update
arithmetic there (``ChainedOptimizer``'s ``state_dtype``); only the parameters and the forward
and backward passes are in low precision. The loss is computed from float32 logits. Prints
the validation loss every 50 steps per optimizer, dtype and seed, then the final means::

    OMP_NUM_THREADS=1 python benchmarks/mixed_precision.py --seeds 2 lion hfac adamw_variant

A whole-float16 model is a test of the model as much as of the optimizer: this one's RMSNorm
backward (the derivative of ``rsqrt`` of a small mean square) overflows float16 and turns
gradients into NaN, whatever the optimizer. ``GradScaler`` refuses float16 gradients; train
float16 with ``torch.autocast`` over float32 parameters instead.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

import hamopt
from hamopt.bench import data as D
from hamopt.bench.models import TinyLlama

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def run(name: str, dtype: torch.dtype, seed: int, steps: int, batch: int = 16, ctx: int = 32) -> list[float]:
    text = D.stdlib_text()
    torch.manual_seed(seed)
    model = TinyLlama(d=48, layers=2, heads=4, ffn=round(48 * 8 / 3 / 8) * 8, ctx=ctx).to(dtype)
    g = torch.Generator().manual_seed(seed)
    windows = torch.randint(0, len(text.val) - ctx - 1, (64,), generator=torch.Generator().manual_seed(1234))

    def batch_at(t: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = t[starts[:, None] + torch.arange(ctx + 1)[None]]
        return w[:, :-1], w[:, 1:]

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x).float().flatten(0, 1), y.flatten())

    info = hamopt.get(name)
    opt = info.create(model.parameters())
    curve = []
    for step in range(1, steps + 1):
        x, y = batch_at(text.train, torch.randint(0, len(text.train) - ctx - 1, (batch,), generator=g))
        opt.zero_grad(set_to_none=True)
        loss_of(x, y).backward(create_graph=info.step_needs == "graph")
        opt.step()
        if step % 50 == 0:
            with torch.no_grad():
                curve.append(float(loss_of(*batch_at(text.val, windows))))
    return curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="+")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--dtypes", default="float32,bfloat16,float16")
    args = ap.parse_args()
    torch.set_num_threads(1)
    final: dict[tuple[str, str], list[float]] = {}
    for name in args.names:
        for dn in args.dtypes.split(","):
            for seed in range(args.seeds):
                curve = run(name, DTYPES[dn], seed, args.steps)
                final.setdefault((name, dn), []).append(curve[-1])
                print(f"{name:12s} {dn:9s} seed {seed}: val loss every 50 steps " + " ".join(f"{v:.3f}" for v in curve),
                      flush=True)
    print("\nfinal validation loss (mean over seeds, min-max)")
    for (name, dn), v in final.items():
        print(f"{name:12s} {dn:9s} {statistics.mean(v):.3f} ({min(v):.3f}-{max(v):.3f})")


if __name__ == "__main__":
    main()
