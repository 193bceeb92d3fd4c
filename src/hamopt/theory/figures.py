"""PNG figures of ``hamopt theory`` (matplotlib, the ``bench`` extra, imported lazily, Agg).

- ``theory-<family>.png``: the energy ``H(t)/H(0)`` along each system's RK4 trajectory, one
  panel per objective, the condition shaded where it fails (conditional systems), basis
  refreshes dotted (AdaDiag);
- ``theory-lionk-constraint-<kernel>.png``: the live LionK's constraint norm ``wd N(x_t)``
  against steps, with the rate bound ``1 + (1 - lr wd)^t (wd N(x_0) - 1)``;
- ``theory-lionk_discrete.png``: Theorem 4.1's slack ``bound - (H_(t+1) - H_t)`` with the
  corrected and the printed constants, and phase 1's gauge against its bound;
- ``theory-ams.png``: the AMS corollaries' differences from the reference loops.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .claims import FAMILIES, FamilyResult
from .integrate import Trajectory

__all__ = ["draw_family", "pyplot"]

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend; ``ImportError`` with the install hint."""
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("matplotlib is needed for the figures: pip install hamopt[bench]") from e
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _plain_log_labels(ax: Any) -> None:
    """Log axis with tick labels as plain numbers (0.5, not 5 x 10^-1)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    lo, hi = ax.get_ylim()
    wide = lo > 0 and hi / lo > 1e3  # over three decades: powers of ten only
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0,) if wide else (1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _spans(tr: Trajectory) -> list[tuple[float, float]]:
    """Time intervals where the condition fails."""
    out: list[tuple[float, float]] = []
    start = None
    for t, s in zip(tr.t, tr.slack):
        if s < 0 and start is None:
            start = t
        elif s >= 0 and start is not None:
            out.append((start, t))
            start = None
    if start is not None:
        out.append((start, tr.t[-1]))
    return out


def _energy_figure(res: FamilyResult, path: Path) -> None:
    plt = pyplot()
    objectives: list[str] = []
    for trs in res.trajectories.values():
        for o in trs:
            if o not in objectives:
                objectives.append(o)
    n = len(objectives)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 4.0), squeeze=False)
    shaded_label = False
    hs: list[float] = []  # the RK4 steps used, the first one the usual
    for j, obj in enumerate(objectives):
        ax = axes[0][j]
        lowest = 1.0
        for i, (sname, trs) in enumerate(res.trajectories.items()):
            tr = trs.get(obj)
            if tr is None or not tr.energy:
                continue
            if tr.h not in hs:
                hs.append(tr.h)
            label = sname if tr.h == hs[0] else f"{sname} (h = {tr.h:g})"
            e0 = tr.energy[0] if tr.energy[0] != 0 else 1.0
            ys = [max(e / e0, 1e-12) for e in tr.energy]
            lowest = min(lowest, min(ys))
            # line styles and widths differ per system, so systems whose energies coincide
            # (Grams and Cautious on some objectives) stay visible
            style = "--" if "broken" in sname else ["-", "--", "-.", ":"][i % 4]
            ax.plot(tr.t, ys, style, color=COLORS[i % len(COLORS)], lw=max(2.6 - 0.4 * i, 1.2), label=label)
            if tr.system.conditional or res.family == "adafactor_m":
                for a, b in _spans(tr):
                    ax.axvspan(a, b, color=COLORS[i % len(COLORS)], alpha=0.12, lw=0,
                               label=None if shaded_label else "condition fails (shaded)")
                    shaded_label = True
            for t in tr.refreshes[1:]:
                ax.axvline(t, color=COLORS[i % len(COLORS)], ls=":", lw=0.8, alpha=0.6)
        if lowest < 0.1:  # more than a decade: log scale
            ax.set_yscale("log")
            _plain_log_labels(ax)
            ax.set_title(f"{obj} (log y)")
        else:
            ax.set_title(obj)
        ax.set_xlabel("time t")
        if j == 0:
            ax.set_ylabel("H(t) / H(0)")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = [], []
    for ax in axes[0]:
        for hd, lb in zip(*ax.get_legend_handles_labels()):
            if lb not in labels:
                handles.append(hd)
                labels.append(lb)
    if res.family == "adadiag":
        labels.append("dotted: basis refreshes")
        handles.append(plt.Line2D([], [], color="gray", ls=":"))
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), frameon=False, fontsize=9)
    title = FAMILIES[res.family][0]
    steps = " and ".join(f"{v:g}" for v in hs) if hs else "?"
    fig.suptitle(f"{title}: energy along the ODE (RK4, h = {steps})", fontsize=12)
    rows = math.ceil(len(labels) / 4)
    fig.tight_layout(rect=(0, 0.06 + 0.04 * rows, 1, 0.95))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _constraint_figure(kname: str, series: dict[str, list[float]], path: Path, label: str) -> None:
    plt = pyplot()
    wd = series["wd"][0]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    names = [k for k in series if ":" not in k and k != "wd"]
    for i, name in enumerate(names):
        ys = [v * wd for v in series[name]]
        ax.plot(range(len(ys)), ys, color=COLORS[i % len(COLORS)], lw=1.8, label=f"{name}")
    b = [v * wd for v in series[names[0] + ":bound"]]
    ax.plot(range(len(b)), b, color="0.55", lw=5, alpha=0.45, zorder=0,
            label="rate bound 1 + (1 - lr wd)^t (wd N(x_0) - 1)\n(reached when the gradient pushes outward)")
    ax.axhline(1.0, color="gray", lw=1.0, label="boundary N(x) = 1/wd")
    ax.set_xlabel("optimizer step t")
    ax.set_ylabel("wd N(x_t)  (inside the set: <= 1)")
    ax.set_title(f"LionK {label}: constraint norm (lr = 0.02, wd = {wd:g})", fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _discrete_figure(res: FamilyResult, path: Path) -> None:
    plt = pyplot()
    kernels: list[str] = []
    objs: list[str] = []
    for k in res.series:
        parts = k.split(":")
        if parts[0] not in kernels:
            kernels.append(parts[0])
        if parts[1] not in objs:
            objs.append(parts[1])
    n = len(kernels)
    fig, axes = plt.subplots(2, n, figsize=(3.3 * n, 6.6), squeeze=False)
    eps, lam = 0.05, 0.5
    for j, kname in enumerate(kernels):
        ax1, ax2 = axes[0][j], axes[1][j]
        for i, obj in enumerate(objs):
            run = res.series.get(f"{kname}:{obj}")
            c = COLORS[i % len(COLORS)]
            if run is not None:
                for kind, style in (("corrected", "-"), ("printed", ":")):
                    slack = [rh - lh for lh, rh in zip(run[kind + ":lhs"], run[kind + ":rhs"])]
                    ax1.plot(range(1, len(slack) + 1), slack, style, color=c, lw=1.3)
            g = res.series.get(f"{kname}:{obj}:phase1")
            if g is not None:
                out_part = [(t, v - 1) for t, v in enumerate(g) if v - 1 > 1e-12]
                if out_part:
                    ax2.plot([t for t, _ in out_part], [v for _, v in out_part], color=c, lw=1.6)
                    last = out_part[-1][0]
                    if last + 1 < len(g):
                        ax2.plot([last], [out_part[-1][1]], "o", color=c, ms=5)
                if i == 0:
                    ts = range(len(g))
                    ax2.plot(ts, [(1 / (1 + eps * lam)) ** t * (g[0] - 1) for t in ts], "k--", lw=1.2)
        ax1.axhline(0.0, color="k", lw=0.8)
        ax1.set_yscale("symlog", linthresh=1e-3)
        ax1.set_title(kname, fontsize=11)
        ax1.grid(True, alpha=0.3)
        ax2.set_yscale("log")
        ax2.set_xlabel("step t")
        ax2.grid(True, which="major", alpha=0.3)
        if j == 0:
            ax1.set_ylabel("bound - (H_(t+1) - H_t)\n(Theorem 4.1 holds: >= 0)")
            ax2.set_ylabel("N(lambda x_t) - 1\n(outside dom K*: > 0)")
    handles = [plt.Line2D([], [], color=COLORS[i % len(COLORS)], lw=2) for i in range(len(objs))]
    labels = list(objs)
    handles += [plt.Line2D([], [], color="gray", ls="-"), plt.Line2D([], [], color="gray", ls=":"),
                plt.Line2D([], [], color="k", ls="--"), plt.Line2D([], [], color="gray", marker="o", ls="")]
    labels += ["THEORY.md's constants", "the seed's printed constants (violated where < 0)",
               "phase-1 bound (1/(1 + eps lambda))^t (N_0 - 1)", "entered dom K*"]
    fig.legend(handles, labels, loc="lower center", ncol=4, frameon=False, fontsize=9)
    fig.suptitle("Lion-K discrete (seed 004, Theorem 4.1; THEORY.md section 8): eps = 0.05, lambda = 0.5, "
                 "betas = (0.9, 0.99)", fontsize=12)
    fig.tight_layout(rect=(0, 0.09, 1, 0.95))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _ams_figure(res: FamilyResult, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.4))
    claims = list(res.series)
    objs: list[str] = []
    for c in claims:
        for o in res.series[c]:
            if o not in objs:
                objs.append(o)
    width = 0.8 / max(len(objs), 1)
    for j, o in enumerate(objs):
        vals = [max(res.series[c].get(o, float("nan")), 1e-18) for c in claims]
        ax.bar([i + j * width for i in range(len(claims))], vals, width, color=COLORS[j % len(COLORS)], label=o)
    ax.axhline(1e-10, color="k", ls="--", lw=1, label="tolerance 1e-10")
    ax.set_yscale("log")
    ax.set_xticks([i + width * (len(objs) - 1) / 2 for i in range(len(claims))])
    ax.set_xticklabels([c.split(":")[0].replace("AMS with misaligned_scale = 1 is Adam", "lam = 1: Adam")
                        for c in claims], fontsize=9)
    ax.set_ylabel("max |x - x_ref| / max |x_ref|")
    ax.set_title("AMS corollaries on a live optimizer (float64, vs independent loops)", fontsize=11)
    ax.legend(fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def draw_family(res: FamilyResult, out: Path) -> list[Path]:
    """Write the family's PNGs into ``out``; returns their paths."""
    out = Path(out)
    paths = []
    if res.family == "ams":
        p = out / "theory-ams.png"
        _ams_figure(res, p)
        return [p]
    if res.family == "lionk_discrete":
        p = out / "theory-lionk_discrete.png"
        _discrete_figure(res, p)
        return [p]
    if res.trajectories:
        p = out / f"theory-{res.family}.png"
        _energy_figure(res, p)
        paths.append(p)
    if res.family == "lionk":
        from .kernels import kernel_label, theory_kernels

        kernels = theory_kernels([k for k in res.series])
        for kname, series in res.series.items():
            p = out / f"theory-lionk-constraint-{kname}.png"
            _constraint_figure(kname, series, p, kernel_label(kernels[kname]))
            paths.append(p)
    return paths
