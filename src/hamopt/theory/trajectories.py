"""What ``hamopt trajectories`` draws: optimizer paths on 2-D loss surfaces.

- the lecture's visualization (seed 002): the chosen optimizers on Rosenbrock, Beale and the
  saddle ``x^2 - y^2``, each at its best learning rate from a small grid (best: the lowest
  loss where the path ends, its exit point if it left the plot);
- the Grams paper's Figure 1 (seed 003): Grams, Adam, C-Adam at lr 0.01 and Lion, C-Lion at
  lr 0.001 on ``(0.5 w1)^2 + (0.1 w2)^2``: paths, distance to the optimum, loss;
- the Lion-K paper's Figure 1 (seed 004): Lion on ``(x1 - 1.5)^2 + x2^2`` with ``wd`` 0.5
  and 1.5, the boxes ``||x||_inf <= 1/wd`` and the constrained optima, and the converged
  loss against ``wd`` (it rises once the optimum leaves the box, ``wd > 2/3``);
- the Lion-K paper's Figure 5: each kernel's path, loss and constraint norm for ``wd`` 0.5
  and 1.5, with its constraint set and the minimizer of ``f + K*(wd x)/wd`` marked.

Every optimizer is a live one from :func:`hamopt.create` on a float64 parameter of shape
``(2,)`` (so H-Fac and AdaDiag run their rules for vectors: unfactored, unrotated). A path
that leaves the plot or stops being finite is drawn up to the exit and marked with an x.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .objectives import SURFACES, Surface

__all__ = ["DEFAULT_OPTIMIZERS", "LR_GRID", "Path2D", "color_of", "draw_all", "run_path"]

DEFAULT_OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "lion", "grams", "hfac", "adadiag")
#: The learning-rate grid of the lecture figures.
LR_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)

_TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
_EXTRA = ["#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1",
          "#636363", "#9c9ede", "#cedb9c", "#e7cb94", "#e7969c", "#de9ed6"]
_FIXED = {n: c for n, c in zip(DEFAULT_OPTIMIZERS, _TAB10)}
_FIXED.update({"cadamw": "#000000", "clion": "#9edae5"})


def color_of(name: str, order: Sequence[str] = ()) -> str:
    """One colour per optimizer, the same in every figure."""
    if name in _FIXED:
        return _FIXED[name]
    others = sorted(set(order) - set(_FIXED)) or [name]
    idx = others.index(name) if name in others else abs(hash(name))
    return _EXTRA[idx % len(_EXTRA)]


@dataclass
class Path2D:
    """A path: points, losses, energies (``None`` where unsupported), and where it stopped."""

    name: str
    lr: float
    xs: list[tuple[float, float]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    energies: list[float] | None = None
    left_at: int | None = None  # index of the first point outside the plot / not finite
    end_loss: float = math.inf  # loss at the last point drawn (the exit point if it left)

    @property
    def score(self) -> float:
        """The loss where the path ends (at its exit if it left the plot; inf if not finite)."""
        return self.end_loss if math.isfinite(self.end_loss) else math.inf


def _inside(p: tuple[float, float], box: tuple[float, float, float, float]) -> bool:
    return box[0] <= p[0] <= box[1] and box[2] <= p[1] <= box[3] and all(map(math.isfinite, p))


def _exit_point(a: tuple[float, float], b: tuple[float, float],
                box: tuple[float, float, float, float]) -> tuple[float, float]:
    """The point where the segment from ``a`` (inside the box) to ``b`` (outside) leaves it."""
    s = 1.0
    for k, (lo, hi) in enumerate(((box[0], box[1]), (box[2], box[3]))):
        d = b[k] - a[k]
        if b[k] > hi and d != 0:
            s = min(s, (hi - a[k]) / d)
        elif b[k] < lo and d != 0:
            s = min(s, (lo - a[k]) / d)
    return (a[0] + s * (b[0] - a[0]), a[1] + s * (b[1] - a[1]))


def run_path(name: str, surface: Surface, lr: float, steps: int, energy: bool = False,
             start: tuple[float, float] | None = None, box: tuple[float, float, float, float] | None = None,
             **kwargs: Any) -> Path2D:
    """Run the registry optimizer ``name`` for ``steps`` steps on ``surface`` from its start."""
    import hamopt

    from .live import energy as live_energy

    box = box or surface.box
    p = torch.nn.Parameter(torch.tensor(start or surface.start, dtype=torch.float64))
    opt = hamopt.create(name, [p], lr=lr, **kwargs)
    graph = hamopt.get(name).step_needs == "graph"  # e.g. Sophia's Hessian estimate
    path = Path2D(name, lr)
    can_energy = energy
    if energy:
        try:
            live_energy(opt, 0.0)
        except (TypeError, ValueError):
            can_energy = False
    path.energies = [] if can_energy else None
    for k in range(steps + 1):
        x = (float(p.detach()[0]), float(p.detach()[1]))
        with torch.no_grad():
            f = float(surface.fn(p))
        if not (_inside(x, box) and math.isfinite(f)):
            path.left_at = k
            if path.xs and all(map(math.isfinite, x)):
                edge = _exit_point(path.xs[-1], x, box)  # where the step crosses the plot's edge
                path.xs.append(edge)
                with torch.no_grad():
                    path.end_loss = float(surface.fn(torch.tensor(edge, dtype=torch.float64)))
            break
        path.end_loss = f
        path.xs.append(x)
        path.losses.append(f)
        if path.energies is not None:
            path.energies.append(live_energy(opt, f))
        if k == steps:
            break
        opt.zero_grad()
        surface.fn(p).backward(create_graph=graph)
        opt.step()
    return path


def best_path(name: str, surface: Surface, steps: int, grid: Sequence[float], energy: bool = False) -> Path2D:
    """The path that ends at the lowest loss over the learning rates ``grid`` (a path that
    leaves the plot ends at its exit point: on the saddle, escaping is good; on Rosenbrock
    or Beale an exit is at a high loss). Ties go to the smaller learning rate."""
    best: Path2D | None = None
    for lr in grid:
        pth = run_path(name, surface, lr, steps, energy=energy)
        if best is None or pth.score < best.score:
            best = pth
    assert best is not None
    return best


# ---------------------------------------------------------------------- drawing
def _contours(ax: Any, surface: Surface, box: tuple[float, float, float, float] | None = None, n: int = 240) -> None:
    import numpy as np

    box = box or surface.box
    xs = torch.linspace(box[0], box[1], n, dtype=torch.float64)
    ys = torch.linspace(box[2], box[3], n, dtype=torch.float64)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    z = surface.fn(torch.stack([gx, gy], dim=-1)).numpy()
    if surface.log_levels:
        zmin = max(float(z.min()), 1e-4)
        levels = np.logspace(math.log10(zmin + 1e-3), math.log10(float(z.max())), 18)
    else:
        levels = np.linspace(float(z.min()), float(z.max()), 21)
    ax.contour(gx.numpy(), gy.numpy(), z, levels=levels, colors="0.6", linewidths=0.7)
    if surface.minimum is not None:
        ax.plot(*surface.minimum, marker="*", color="gold", mec="k", ms=14, ls="", zorder=5)
    ax.plot(*(surface.start), marker="o", color="k", ms=5, ls="", zorder=5)
    ax.set_xlim(box[0], box[1])
    ax.set_ylim(box[2], box[3])


def _draw_path(ax: Any, pth: Path2D, color: str, label: str, lw: float = 1.6) -> None:
    xs = [p[0] for p in pth.xs]
    ys = [p[1] for p in pth.xs]
    ax.plot(xs, ys, "-", color=color, lw=lw, label=label, alpha=0.9)
    if pth.left_at is not None and pth.xs:
        ax.plot(xs[-1], ys[-1], "x", color=color, ms=10, mew=2.5, zorder=6, clip_on=False)


def _fmt_lr(lr: float) -> str:
    return f"{lr:g}"


def draw_lecture(surface: Surface, paths: list[Path2D], path: Path, order: Sequence[str], grid: Sequence[float],
                 steps: int) -> None:
    from .figures import pyplot

    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5.6), gridspec_kw={"width_ratios": [1.25, 1]})
    _contours(ax, surface)
    for pth in paths:
        tag = " (left the plot: x)" if pth.left_at is not None else ""
        _draw_path(ax, pth, color_of(pth.name, order), f"{pth.name}, lr {_fmt_lr(pth.lr)}{tag}")
        ax2.plot(range(len(pth.losses)), pth.losses, color=color_of(pth.name, order), lw=1.5)
    ax.set_title(f"{surface.title}: paths ({steps} steps; o start" + (", * minimum)" if surface.minimum else ")"),
                 fontsize=10)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), framealpha=0.9)
    if surface.log_levels:
        from .figures import _plain_log_labels

        ax2.set_yscale("log")
        _plain_log_labels(ax2)
    else:
        ax2.set_yscale("symlog", linthresh=1e-2)
    ax2.set_xlabel("step")
    ax2.set_ylabel("loss")
    ax2.set_title("loss at each step (a line ends where its path left the plot)", fontsize=10)
    ax2.grid(True, which="major", alpha=0.3)
    fig.suptitle(f"Lecture visualization (seed 002): best lr per optimizer from {{{', '.join(map(_fmt_lr, grid))}}}; "
                 "H-Fac and AdaDiag use their vector rules on 2-D", fontsize=11)
    # fixed margins (tight_layout measures every artist: seconds per figure)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.09, top=0.87, wspace=0.62)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def draw_energy(surface: Surface, paths: list[Path2D], path: Path, order: Sequence[str]) -> None:
    """One panel per optimizer with an energy: its path coloured by ``log10 H``."""
    import numpy as np
    from matplotlib.collections import LineCollection

    from .figures import pyplot

    plt = pyplot()
    withe = [p for p in paths if p.energies and len(p.energies) > 1]
    if not withe:
        return
    n = len(withe)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for i, pth in enumerate(withe):
        ax = axes[i // cols][i % cols]
        _contours(ax, surface, n=120)
        pts = np.array(pth.xs[: len(pth.energies)])
        e = np.array(pth.energies)
        if surface.log_levels:
            vals = np.log10(np.maximum(e, 1e-4))
            what = "log10 H (floor -4)"
        else:
            vals = e
            what = "H"
        segs = np.stack([pts[:-1], pts[1:]], axis=1)
        lc = LineCollection(segs, cmap="viridis", linewidths=2.2)
        lc.set_array(vals[:-1])
        ax.add_collection(lc)
        cb = fig.colorbar(lc, ax=ax, fraction=0.046, pad=0.03)
        cb.set_label(what, fontsize=8)
        ax.set_title(f"{pth.name}, lr {_fmt_lr(pth.lr)}", fontsize=10, color=color_of(pth.name, order))
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.suptitle(f"{surface.title}: paths coloured by the family's energy H (hamopt.theory.energy)", fontsize=11)
    fig.subplots_adjust(left=0.06, right=0.95, bottom=0.08, top=0.86 if rows == 1 else 0.9, wspace=0.45, hspace=0.35)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def draw_grams_figure1(path: Path, steps: int) -> list[Path2D]:
    """The Grams paper's Figure 1: paths, log distance to the optimum, loss."""
    from .figures import pyplot

    plt = pyplot()
    s = SURFACES["grams_quadratic"]
    start, box = (1.0, 1.0), (-0.6, 1.3, -0.6, 1.3)
    runs = [("grams", 0.01), ("adam", 0.01), ("cadamw", 0.01), ("lion", 0.001), ("clion", 0.001)]
    order = [n for n, _ in runs]
    paths = [run_path(n, s, lr, steps, start=start, box=box) for n, lr in runs]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    _contours(axes[0], Surface(s.name, s.title, s.fn, start, box, s.minimum), box)
    for i, pth in enumerate(paths):
        c = color_of(pth.name, order)
        lw = 4.0 - 0.6 * i  # earlier paths wider, so overlapping ones stay visible
        _draw_path(axes[0], pth, c, f"{pth.name}, lr {_fmt_lr(pth.lr)}", lw=lw)
        d = [math.log10(max(math.hypot(*p), 1e-12)) for p in pth.xs[: len(pth.losses)]]
        axes[1].plot(range(len(d)), d, color=c, lw=lw * 0.6)
        axes[2].plot(range(len(pth.losses)), [max(v, 1e-24) for v in pth.losses], color=c, lw=lw * 0.6)
    axes[0].set_title("paths from (1, 1) (* optimum; wider = earlier in the legend)", fontsize=10)
    axes[0].set_xlabel("w1")
    axes[0].set_ylabel("w2")
    axes[0].legend(fontsize=8)
    axes[1].set_title("log10 ||w - w*|| (floor -12)", fontsize=10)
    axes[2].set_title("loss f(w) (floor 1e-24)", fontsize=10)
    axes[2].set_yscale("log")
    for ax in axes[1:]:
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    fig.suptitle("Grams paper, Figure 1 (seed 003): f(w) = (0.5 w1)^2 + (0.1 w2)^2, default betas", fontsize=11)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.11, top=0.86, wspace=0.25)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return paths


def draw_lionk_figure1(path: Path, steps: int, wd_points: int = 10) -> list[Path2D]:
    """The Lion-K paper's Figure 1: Lion with wd 0.5 (blue) and 1.5 (green)."""
    from .figures import pyplot

    plt = pyplot()
    s = SURFACES["lionk_box"]
    lr = 0.01
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.6))
    _contours(axes[0], s)
    paths = []
    for wd, c in ((0.5, "tab:blue"), (1.5, "tab:green")):
        pth = run_path("lion", s, lr, steps, weight_decay=wd)
        paths.append(pth)
        r = 1 / wd
        axes[0].add_patch(plt.Rectangle((-r, -r), 2 * r, 2 * r, fill=False, ec=c, lw=1.5, ls="--"))
        _draw_path(axes[0], pth, c, f"Lion, wd {wd:g} (box ||x||_inf <= {r:.3g})")
        opt_x = (min(1.5, r), 0.0)
        axes[0].plot(*opt_x, marker="D", color=c, mec="k", ms=8, ls="", zorder=7)
        axes[1].plot(range(len(pth.losses)), pth.losses, color=c, lw=1.5, label=f"wd {wd:g}")
        axes[2].plot(range(len(pth.xs)), [max(abs(p[0]), abs(p[1])) for p in pth.xs], color=c, lw=1.5,
                     label=f"wd {wd:g}")
        axes[2].axhline(r, color=c, ls="--", lw=1)
    axes[0].set_title("Lion paths (o start; diamonds: constrained optima)", fontsize=10)
    axes[0].legend(fontsize=8, loc="lower left")
    axes[1].set_title("f(x_t)", fontsize=10)
    axes[1].set_yscale("log")
    from .figures import _plain_log_labels

    _plain_log_labels(axes[1])
    axes[2].set_title("||x_t||_inf (dashed: 1/wd)", fontsize=10)
    wds = [0.1 + i * (1.9 / max(wd_points - 1, 1)) for i in range(wd_points)]
    final = []
    for wd in wds:
        pth = run_path("lion", s, lr, steps, weight_decay=wd)
        final.append(pth.losses[-1] if pth.losses else math.nan)
    axes[3].plot(wds, final, "o-", color="k", lw=1.2, ms=4, label="Lion after the run")
    wfine = [0.05 + i * 0.01 for i in range(196)]
    axes[3].plot(wfine, [max(1.5 - 1 / w, 0.0) ** 2 for w in wfine], color="tab:red", lw=1.2,
                 label="min of f on the box")
    axes[3].axvline(2 / 3, color="gray", ls=":", lw=1)
    axes[3].text(2 / 3, 0.02, " wd = 2/3", fontsize=8, color="gray", transform=axes[3].get_xaxis_transform())
    axes[3].set_title("converged loss vs wd", fontsize=10)
    axes[3].set_xlabel("wd (lambda)")
    axes[3].legend(fontsize=8)
    for ax in axes[1:3]:
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    for ax in axes[1:]:
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"Lion-K paper, Figure 1 (seed 004): f(x) = (x1 - 1.5)^2 + x2^2, Lion lr {lr:g}, betas (0.9, 0.99), "
                 f"{steps} steps", fontsize=11)
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.12, top=0.85, wspace=0.22)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return paths


def draw_lionk_figure5(path: Path, steps: int) -> None:
    """The Lion-K paper's Figure 5: each kernel's path, loss and constraint norm, for wd
    0.5 (blue: optimum inside) and 1.5 (green: at the boundary)."""
    from .figures import pyplot
    from .kernels import KERNEL_SPECS, gauge_points, kernel_label, penalty_points, theory_kernels

    plt = pyplot()
    s = SURFACES["lionk_box"]
    lr = 0.01
    kernels = theory_kernels()
    n = len(kernels)
    fig, axes = plt.subplots(n, 3, figsize=(13, 3.3 * n))
    xs = torch.linspace(-3, 3, 301, dtype=torch.float64)
    gx, gy = torch.meshgrid(xs, xs, indexing="xy")
    pts = torch.stack([gx, gy], dim=-1)
    fvals = s.fn(pts)
    for i, (kname, kern) in enumerate(kernels.items()):
        ax0, ax1, ax2 = axes[i]
        _contours(ax0, s, n=120)
        for wd, c in ((0.5, "tab:blue"), (1.5, "tab:green")):
            pth = run_path("lionk", s, lr, steps, weight_decay=wd, kernel=kname, **KERNEL_SPECS[kname])
            g = gauge_points(kern, pts) * wd
            ax0.contour(gx.numpy(), gy.numpy(), g.numpy(), levels=[1.0], colors=[c], linewidths=1.4,
                        linestyles="--")
            obj = fvals + penalty_points(kern, pts, wd)
            k = int(torch.argmin(obj))
            ax0.plot(float(pts.reshape(-1, 2)[k, 0]), float(pts.reshape(-1, 2)[k, 1]), marker="D", color=c,
                     mec="k", ms=7, ls="", zorder=7)
            _draw_path(ax0, pth, c, f"wd {wd:g}")
            ax1.plot(range(len(pth.losses)), pth.losses, color=c, lw=1.4, label=f"wd {wd:g}")
            gn = [float(gauge_points(kern, torch.tensor(p, dtype=torch.float64))) for p in pth.xs]
            ax2.plot(range(len(gn)), gn, color=c, lw=1.4, label=f"wd {wd:g}")
            ax2.axhline(1 / wd, color=c, ls="--", lw=1)
        ax0.set_title(f"{kernel_label(kern)}: paths, sets N(x) <= 1/wd (dashed)", fontsize=9)
        ax0.legend(fontsize=7, loc="lower left")
        ax1.set_yscale("log")
        ax1.set_title("f(x_t)", fontsize=9)
        ax2.set_title("constraint norm N(x_t) (dashed: 1/wd)", fontsize=9)
        for ax in (ax1, ax2):
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        if i == n - 1:
            ax1.set_xlabel("step")
            ax2.set_xlabel("step")
    fig.suptitle(f"Lion-K paper, Figure 5 (seed 004): kernels of Table 2 on (x1 - 1.5)^2 + x2^2, lr {lr:g}, "
                 f"{steps} steps; diamonds: minimizer of f + K*(wd x)/wd", fontsize=11)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.04, top=0.95, wspace=0.25, hspace=0.3)
    fig.savefig(path, dpi=80)
    plt.close(fig)


FIGURES = ("lecture", "grams", "lionk1", "lionk5")


def draw_all(out: Path, optimizers: Sequence[str] = DEFAULT_OPTIMIZERS, steps: int = 250,
             grid: Sequence[float] = LR_GRID, energy: bool = False, figures: Sequence[str] = FIGURES,
             surfaces: Sequence[str] = ("rosenbrock", "beale", "saddle"), paper_steps: int = 600) -> list[Path]:
    """Draw the figures into ``out``; returns the PNG paths."""
    out = Path(out)
    written: list[Path] = []
    order = list(optimizers)
    if "lecture" in figures:
        for sname in surfaces:
            s = SURFACES[sname]
            paths = [best_path(n, s, steps, grid, energy=energy) for n in optimizers]
            p = out / f"trajectories-{sname}.png"
            draw_lecture(s, paths, p, order, grid, steps)
            written.append(p)
            if energy:
                pe = out / f"trajectories-energy-{sname}.png"
                draw_energy(s, paths, pe, order)
                if pe.exists():
                    written.append(pe)
    if "grams" in figures:
        p = out / "trajectories-grams-figure1.png"
        draw_grams_figure1(p, paper_steps)
        written.append(p)
    if "lionk1" in figures:
        p = out / "trajectories-lionk-figure1.png"
        draw_lionk_figure1(p, paper_steps)
        written.append(p)
    if "lionk5" in figures:
        p = out / "trajectories-lionk-figure5.png"
        draw_lionk_figure5(p, paper_steps)
        written.append(p)
    return written
