"""bf16 parameters and state: bytes per parameter, step time and charlm curves, as a Markdown table.

Four settings of one hamopt optimizer:

- ``fp32``: float32 parameters and state;
- ``bf16 / fp32 state``: bfloat16 parameters, float32 state and arithmetic (the default for
  bf16 parameters), written back with round-to-nearest;
- ``bf16 / fp32 state + SR``: the same, written back with stochastic rounding;
- ``bf16 / bf16 state``: ``state_dtype=torch.bfloat16`` (state and arithmetic in bf16; the
  update is added to the bf16 parameter in bf16, so there is no float32 value to round
  stochastically);

Step time: the optimizer step alone on a LLaMA-style model's shapes (``--shapes-model``),
every setting stepped once per round (interleaved, so machine load hits them alike), median
over rounds, as a ratio to the fp32 setting. Curves: the ``charlm`` benchmark task (byte-level
LLaMA-style LM on the Python standard library) with the model's parameters cast to bf16::

    OMP_NUM_THREADS=1 python benchmarks/bf16_precision.py --optimizers hfac lion --seeds 2
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time

import torch

import hamopt
from hamopt.bench.models import TinyLlama
from hamopt.bench.tasks import get_task

SETTINGS = {
    "fp32": dict(dtype=torch.float32, state_dtype=None, sr=False),
    "bf16 / fp32 state": dict(dtype=torch.bfloat16, state_dtype=None, sr=False),
    "bf16 / fp32 state + SR": dict(dtype=torch.bfloat16, state_dtype=None, sr=True),
    "bf16 / bf16 state": dict(dtype=torch.bfloat16, state_dtype=torch.bfloat16, sr=False),
}


def _make(name: str, params: list[torch.Tensor], s: dict, lr: float) -> torch.optim.Optimizer:
    kw = dict(lr=lr)
    if s["state_dtype"] is not None:
        kw["state_dtype"] = s["state_dtype"]
    return hamopt.create(name, params, stochastic_rounding=s["sr"], **kw)


def step_times(name: str, rounds: int, d: int, layers: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median step seconds per setting and bytes (parameter + state) per parameter."""
    torch.manual_seed(0)
    shapes = [tuple(p.shape) for p in TinyLlama(d=d, layers=layers, heads=8, ffn=int(d * 8 / 3)).parameters()]
    runs = {}
    for label, s in SETTINGS.items():
        g = torch.Generator().manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(sh, generator=g).to(s["dtype"])) for sh in shapes]
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g).to(s["dtype"])
        runs[label] = (ps, _make(name, ps, s, 1e-4))
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(rounds + 1):
        for label, (_, opt) in runs.items():
            t0 = time.perf_counter()
            opt.step()
            if r:  # round 0 creates the state
                times[label].append(time.perf_counter() - t0)
    numel = sum(p.numel() for p in runs["fp32"][0])
    per_param = {k: (sum(p.numel() * p.element_size() for p in ps) + hamopt.state_bytes(o)) / numel
                 for k, (ps, o) in runs.items()}
    return {k: statistics.median(v) for k, v in times.items()}, per_param


def curve(name: str, s: dict, lr: float, seed: int, task: str) -> list[tuple[int, float]]:
    t = get_task(task)
    prob = t.build(seed)
    with torch.no_grad():
        for p in prob.params:
            p.data = p.data.to(s["dtype"])
    opt = _make(name, prob.params, s, lr)
    torch.manual_seed(seed)  # the stochastic rounding's random bits
    # bf16 parameters: the forward runs under CPU autocast (the model's float32 rotary
    # buffers meet bf16 activations), as bf16 training does
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=s["dtype"] == torch.bfloat16)
    out = []
    for step in range(1, t.steps + 1):
        opt.zero_grad(set_to_none=True)
        with amp:
            loss = prob.train_loss(step)
        loss.backward()
        opt.step()
        if step % t.eval_every == 0 or step == t.steps:
            with amp:
                out.append((step, prob.evaluate("val")["loss"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--optimizers", nargs="+", default=["hfac", "lion"])
    ap.add_argument("--lr", nargs="+", type=float, default=[3e-3, 3e-4], help="one per optimizer")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--d", type=int, default=256, help="width of the model whose shapes are timed")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--task", default="charlm")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"<!-- python benchmarks/bf16_precision.py {' '.join(__import__('sys').argv[1:])}; "
          f"{datetime.date.today()}; torch {torch.__version__} -->")
    for name, lr in zip(args.optimizers, args.lr):
        times, per_param = step_times(name, args.rounds, args.d, args.layers)
        curves = {k: [curve(name, s, lr, seed, args.task) for seed in range(args.seeds)] for k, s in SETTINGS.items()}
        steps = [st for st, _ in curves["fp32"][0]]
        marks = [st for st in steps if st in (steps[len(steps) // 4 - 1], steps[len(steps) // 2 - 1], steps[-1])]
        print(f"\n**{name}** (lr {lr:g}; {args.task} validation loss, mean of {args.seeds} seeds)\n")
        print("| setting | bytes / param | step time vs fp32 | " + " | ".join(f"loss @ {m}" for m in marks) + " |")
        print("|---|---:|---:|" + "---:|" * len(marks))
        for k in SETTINGS:
            losses = []
            for m in marks:
                vals = [dict(c)[m] for c in curves[k]]
                losses.append(f"{statistics.mean(vals):.3f}")
            print(f"| {k} | {per_param[k]:.2f} | {times[k] / times['fp32']:.2f}x | " + " | ".join(losses) + " |")


if __name__ == "__main__":
    main()
