"""``hamopt speed``: optimizer-step time, effective GB/s and ratios to torch AdamW."""

from __future__ import annotations

import argparse
import json
import sys

from .main import UsageError

NAME = "speed"
HELP = "median optimizer-step time on a model's shapes, effective GB/s, ratio to torch AdamW foreach/fused"
ORDER = 40


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..bench.shapes import MODELS

    p.add_argument("--model", default="llama60m", help=f"parameter shapes of: {', '.join(MODELS)} (default llama60m)")
    p.add_argument("--shapes", help="your own shapes instead of --model, e.g. 512x512,1376x512,512")
    p.add_argument("--optimizers", nargs="+", metavar="NAME", help="registry names (default: all); commas allowed")
    p.add_argument("--device", default="cpu", help="cpu or cuda (or cuda:N)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per repeat (default 10)")
    p.add_argument("--repeat", type=int, default=3, help="repeats (default 3); the median is over steps x repeats")
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps (default 3)")
    p.add_argument("--svd-interval", type=int, default=200,
                   help="interval for the amortized step of SVD-based optimizers (default 200)")
    p.add_argument("--no-peers", action="store_true", help="skip pytorch_optimizer / lion_pytorch / grams rows")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--matmul-precision", choices=("highest", "high", "medium"),
                   help="torch.set_float32_matmul_precision for the run: 'high' allows TF32 tensor cores "
                        "on GPUs (faster rotations for SVD-based optimizers, less exact); default: torch's "
                        "current setting ('highest' unless changed)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _ops(ops: dict[str, int] | None) -> str:
    """``compute/foreach`` operations of one step (``-`` when not counted)."""
    return "-" if not ops else f"{ops['compute']}/{ops['foreach']}"


def run(args: argparse.Namespace) -> int:
    import torch

    from ..bench.common import fmt_bytes, resolve_optimizers
    from ..bench.shapes import model_shapes, parse_shapes
    from ..bench.speed import speed_table

    try:
        shapes = parse_shapes(args.shapes) if args.shapes else model_shapes(args.model)
        infos = resolve_optimizers(args.optimizers)
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        dev = torch.device(args.device)
    except (ValueError, RuntimeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise UsageError(f"--device must be cpu or cuda (or cuda:N), not {args.device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    for name in ("steps", "repeat", "svd_interval"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        raise UsageError("--warmup must be at least 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.matmul_precision:
        torch.set_float32_matmul_precision(args.matmul_precision)

    def progress(label: str) -> None:
        if not args.json:
            sys.stderr.write(f"  timing {label} ...\n")

    t = speed_table(shapes, infos, device=str(dev), steps=args.steps, warmup=args.warmup, repeat=args.repeat,
                    peers=not args.no_peers, svd_interval=args.svd_interval, progress=progress)
    t["model"] = "custom shapes" if args.shapes else args.model
    t["matmul_precision"] = torch.get_float32_matmul_precision()
    if args.json:
        print(json.dumps(t, indent=2))
        return 0
    print(f"{t['model']}: {t['params']:,} parameters on {t['device_name']}, torch {t['torch']}; "
          f"copy bandwidth {t['bandwidth_gbs']:.1f} GB/s; float32 matmul precision {t['matmul_precision']}; "
          f"median of {t['steps'] * t['repeat']} steps")
    w = max(len(r["name"]) for r in t["rows"])
    print(f"{'optimizer':<{w}}  {'ms/step':>9}  {'GB/s':>7}  {'% bw':>5}  {'vs foreach':>10}  {'vs fused':>8}  "
          f"{'state':>10}  {'ops':>9}  notes")
    for r in t["rows"]:
        if r["error"]:
            print(f"{r['name']:<{w}}  ERROR {r['error']}")
            continue
        note = r["note"]
        if r["svd"]:
            s = r["svd"]
            note = (f"amortized at {s['key']}={s['interval']}: svd step {s['svd_step_ms']:.2f} ms, "
                    f"plain step {s['plain_step_ms']:.2f} ms")
        if not r["finite"]:
            note += " (non-finite parameters after the timed steps)"
        print(f"{r['name']:<{w}}  {r['median_ms']:>9.3f}  {r['gbs']:>7.1f}  {100 * r['frac_bandwidth']:>5.1f}  "
              f"{_fmt(r['vs_adamw_foreach'], '>10.2f')}  {_fmt(r['vs_adamw_fused'], '>8.2f')}  "
              f"{fmt_bytes(r['state_bytes']):>10}  {_ops(r['ops']):>9}  {note}")
    return 0
