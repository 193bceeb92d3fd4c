"""Interleaved step times of any optimizers beside torch AdamW on a model's shapes.

``hamopt speed`` times one optimizer after another; on a shared, noisy machine the ratios
drift between runs. This script steps every optimizer once per round on the same parameters
and gradients (round-robin), so load changes hit all of them alike, and prints the median
step time and its ratio to AdamW (foreach)::

    OMP_NUM_THREADS=1 python benchmarks/interleaved_step.py --rounds 7 hfac adafactor_m signfsgd
    python benchmarks/interleaved_step.py grams peer:grams.Grams peer:pytorch_optimizer.Grams

Names are hamopt registry names; ``adamw`` (foreach) and ``fused`` are torch's AdamW;
``peer:<module>.<Class>`` is one of ``hamopt.bench.speed.PEERS`` (their own defaults).
``<name>@<N>`` runs a hamopt optimizer with ``cpu_chunk_numel = N`` (``lion@0``: whole-bucket
steps, for an A/B of the CPU pieces in the same rounds).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import hamopt
from hamopt.bench.shapes import model_shapes
from hamopt.bench.speed import PEERS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="+")
    ap.add_argument("--model", default="llama60m")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=g).to(dev).requires_grad_() for _, s in model_shapes(args.model)]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g).to(dev) * 1e-3
    names = ["adamw", *[n for n in args.names if n != "adamw"]]
    opts = {}
    for n in names:
        if n == "adamw":
            opts[n] = torch.optim.AdamW(ps, lr=1e-6, foreach=True)
        elif n == "fused":
            opts[n] = torch.optim.AdamW(ps, lr=1e-6, fused=True)
        elif n.startswith("peer:"):
            peer = next((p for p in PEERS if p.label == n), None)
            if peer is None or not peer.available():
                raise SystemExit(f"unknown or missing peer {n!r}; known: {', '.join(p.label for p in PEERS)}")
            opts[n] = peer.factory()(ps)
        else:
            name, _, chunk = n.partition("@")
            opts[n] = hamopt.create(name, ps, lr=1e-6)
            if chunk:
                opts[n].cpu_chunk_numel = int(chunk)
    times: dict[str, list[float]] = {n: [] for n in names}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for r in range(args.rounds + 1):
        for n, o in opts.items():
            sync()
            t = time.perf_counter()
            o.step()
            sync()
            if r:  # round 0 creates the state
                times[n].append(time.perf_counter() - t)
    base = statistics.median(times["adamw"])
    print(f"{args.model} on {dev}, {args.threads} thread(s), median of {args.rounds} interleaved rounds")
    for n in names:
        med = statistics.median(times[n])
        print(f"{n:32s} {med * 1e3:9.1f} ms   x{med / base:5.2f} AdamW(foreach)")


if __name__ == "__main__":
    main()
