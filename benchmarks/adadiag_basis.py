"""AdaDiag's basis refresh: ``basis_method="eigh"`` vs ``"svd"``, time and accuracy per shape.

For each distinct matrix shape of a model (LLaMA-60M by default) this times the basis
computation of one random gradient with both methods, exactly as the rotation computes it
(:func:`hamopt.transforms.rotation._eigh_bases`: float64 Gram plus ``eigh``;
:func:`~hamopt.transforms.rotation._svd_bases`: thin SVD in float32), and reports how far each
basis is from the float64 SVD basis (the largest ``1 - |<b_j, b_ref_j>|`` over the columns),
then the total per refresh over all matrices of the model::

    python benchmarks/adadiag_basis.py --device cpu --threads 1
    python benchmarks/adadiag_basis.py --device cuda --two-sided

Random Gaussian gradients have well separated singular values; the column errors are the
ones of the smallest singular values' directions, the least accurate.
"""

from __future__ import annotations

import argparse
import collections
import time

import torch

from hamopt.bench.shapes import model_shapes
from hamopt.transforms.rotation import _eigh_bases, _svd_bases, rotation_mode


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, repeat: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / repeat


def _err(b: torch.Tensor | None, ref: torch.Tensor | None) -> float:
    if b is None or ref is None:
        return 0.0
    return float((1 - (b.double() * ref).sum(0).abs()).abs().max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama60m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--two-sided", action="store_true", help="AdaDiag++ bases (both sides)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    counts = collections.Counter(s for _, s in model_shapes(args.model) if len(s) >= 2)
    totals = {"eigh": 0.0, "svd": 0.0}
    print(f"{'shape':>14s} {'count':>5s} {'eigh ms':>9s} {'svd ms':>9s} {'eigh err':>9s} {'svd32 err':>9s}")
    gen = torch.Generator().manual_seed(0)
    for shape, count in counts.items():
        left, right = rotation_mode(shape, args.two_sided, 10000)
        if not (left or right):
            continue
        g = torch.randn(shape, generator=gen).reshape(shape[0], -1).to(device)
        t_e = _time(lambda g=g, lt=left, rt=right: _eigh_bases(g, lt, rt), device, args.repeat)
        t_s = _time(lambda g=g, lt=left, rt=right: _svd_bases(g, lt, rt), device, args.repeat)
        ref = _svd_bases(g.double(), left, right)
        e_e = max(_err(b, r) for b, r in zip(_eigh_bases(g, left, right), ref))
        e_s = max(_err(b, r) for b, r in zip(_svd_bases(g, left, right), ref))
        totals["eigh"] += count * t_e
        totals["svd"] += count * t_s
        print(f"{'x'.join(map(str, shape)):>14s} {count:5d} {t_e * 1e3:9.1f} {t_s * 1e3:9.1f} {e_e:9.1e} {e_s:9.1e}")
    print(f"per refresh of all matrices: eigh {totals['eigh'] * 1e3:.0f} ms, svd {totals['svd'] * 1e3:.0f} ms "
          f"({totals['svd'] / max(totals['eigh'], 1e-12):.1f}x)")


if __name__ == "__main__":
    main()
