"""Paired comparisons over seeds: the effect, its confidence interval and a verdict.

Two optimizers run on one task with the same seeds ``1..S`` (a seed fixes the initialization,
the batch order and the gradient noise), so their final metrics pair up seed by seed. For each
seed ``s`` the *paired difference* is

* ``d_s = log(loss_base_s / loss_chal_s)`` for a metric where lower is better (a loss that is
  positive; a ratio is the natural effect when losses span decades, as on the quadratics), or
  ``d_s = base_s - chal_s`` when a loss can be zero or negative (the saddle),
* ``d_s = chal_s - base_s`` for accuracy (higher is better),

so ``d_s > 0`` always means the challenger did better. The effect is the mean ``d`` with a 95%
confidence interval from Student's t distribution with ``S - 1`` degrees of freedom
(``mean +- t_{0.975, S-1} sd / sqrt(S)``: the paired t-test; a bootstrap over 3 seeds has
only 10 distinct resamples and gives intervals far too narrow). The verdict is ``better`` when
the whole interval is above 0, ``worse`` when it is below, and ``no detectable difference``
otherwise; a mean effect smaller than :data:`NEGLIGIBLE` (1% of the loss, 0.1 percentage
point of accuracy) is ``no detectable difference`` too, however narrow its interval (two
optimizers that both reach a toy problem's minimum differ by rounding, consistently). The
effect is reported as the loss ratio ``chal / base = exp(-mean d)`` (with the interval mapped
the same way) or as the accuracy difference in percentage points.

A seed that diverged (or failed) for one optimizer and not the other decides nothing about
the size of the difference but is not noise either: the comparison then says ``worse``
(or ``better``) with the divergence counts, whatever the finished seeds show.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["BETTER", "NO_DIFFERENCE", "NOT_MEASURED", "WORSE", "Comparison", "paired_comparison", "t_quantile"]

BETTER, WORSE, NO_DIFFERENCE, NOT_MEASURED = "better", "worse", "no detectable difference", "not measured"

#: Mean effects this small are no difference: ``log_ratio`` (1% of the loss), ``accuracy``
#: (percentage points), ``difference`` (relative to the baseline's mean absolute loss).
NEGLIGIBLE = {"log_ratio": 0.01, "accuracy": 0.1, "difference": 0.01}

#: t_{0.975, df} for df = 1..30 (two-sided 95%).
_T975 = (12.70620, 4.30265, 3.18245, 2.77645, 2.57058, 2.44691, 2.36462, 2.30600, 2.26216, 2.22814, 2.20099,
         2.17881, 2.16037, 2.14479, 2.13145, 2.11991, 2.10982, 2.10092, 2.09302, 2.08596, 2.07961, 2.07387,
         2.06866, 2.06390, 2.05954, 2.05553, 2.05183, 2.04841, 2.04523, 2.04227)


def t_quantile(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (a table up to 30, then
    the Cornish-Fisher expansion to second order, within 0.001 beyond 30)."""
    if df < 1:
        raise ValueError(f"Invalid df: {df} (expected at least 1)")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Comparison:
    """A challenger against a baseline on one task, paired over seeds.

    Attributes:
        verdict: ``better``, ``worse``, ``no detectable difference`` or ``not measured``.
        scale: ``log_ratio`` (the effect is a loss ratio), ``difference`` (a loss difference)
            or ``accuracy`` (a difference in percentage points).
        effect, low, high: the effect on that scale and its 95% interval (``None`` if not measured).
        pairs: seeds where both finished; ``chal_failed`` / ``base_failed``: seeds where only
            the challenger / only the baseline diverged or failed.
        diffs: the per-seed paired differences ``d_s`` (``d_s > 0``: the challenger did better).
    """

    verdict: str
    scale: str
    effect: float | None
    low: float | None
    high: float | None
    pairs: int
    chal_failed: int
    base_failed: int
    diffs: tuple[float, ...] = ()
    note: str = ""

    def text(self) -> str:
        """``loss ratio 0.82 [0.70, 0.96]`` / ``+1.2 pp [-0.4, +2.8]`` / the reason it is missing."""
        if self.effect is None or self.low is None or self.high is None:
            return self.note or "-"
        if self.scale == "log_ratio":
            s = f"loss ratio {self.effect:.3g} [{self.low:.3g}, {self.high:.3g}]"
        elif self.scale == "accuracy":
            s = f"{self.effect:+.2f} pp [{self.low:+.2f}, {self.high:+.2f}]"
        else:
            s = f"loss difference {self.effect:+.3g} [{self.low:+.3g}, {self.high:+.3g}]"
        return f"{s}; {self.note}" if self.note else s

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["diffs"] = list(self.diffs)
        d["text"] = self.text()
        return d


def paired_comparison(chal: Sequence[float | None], base: Sequence[float | None], higher_is_better: bool
                      ) -> Comparison:
    """Compare per-seed final metrics (``None`` or a non-finite value: that seed diverged or
    failed). ``chal[i]`` and ``base[i]`` must come from the same seed.

    Raises ``ValueError`` when the two lists differ in length.
    """
    if len(chal) != len(base):
        raise ValueError(f"paired_comparison needs one value per seed for both (got {len(chal)} and {len(base)})")

    def ok(x: float | None) -> bool:
        return x is not None and math.isfinite(x)

    pairs = [(c, b) for c, b in zip(chal, base) if ok(c) and ok(b)]
    chal_failed = sum(not ok(c) and ok(b) for c, b in zip(chal, base))
    base_failed = sum(ok(c) and not ok(b) for c, b in zip(chal, base))
    if higher_is_better:
        scale = "accuracy"
        diffs = [100.0 * (c - b) for c, b in pairs]  # type: ignore[operator]
    elif all(c > 0 and b > 0 for c, b in pairs):  # type: ignore[operator]
        scale = "log_ratio"
        diffs = [math.log(b / c) for c, b in pairs]  # type: ignore[operator]
    else:
        scale = "difference"
        diffs = [b - c for c, b in pairs]  # type: ignore[operator]
    fails = ""
    if chal_failed or base_failed:
        fails = f"diverged/failed: challenger {chal_failed}, baseline {base_failed} of {len(chal)} seeds"
    if len(pairs) < 2:
        verdict = WORSE if chal_failed > base_failed else BETTER if base_failed > chal_failed else NOT_MEASURED
        note = fails or f"{len(pairs)} seed(s) finished by both; need at least 2"
        return Comparison(verdict, scale, None, None, None, len(pairs), chal_failed, base_failed, tuple(diffs), note)
    mean = statistics.fmean(diffs)
    sd = statistics.stdev(diffs)
    t = t_quantile(len(diffs) - 1)
    half = t * sd / math.sqrt(len(diffs))
    lo, hi = mean - half, mean + half
    small = NEGLIGIBLE[scale]
    if scale == "difference":
        small *= statistics.fmean(abs(b) for _, b in pairs)  # type: ignore[arg-type]
    if chal_failed > base_failed:
        verdict = WORSE
    elif base_failed > chal_failed or (lo > 0 and mean > small):
        verdict = BETTER
    elif hi < 0 and mean < -small:
        verdict = WORSE
    else:
        verdict = NO_DIFFERENCE
    if scale == "log_ratio":  # chal / base = exp(-d): the interval flips
        effect, low, high = math.exp(-mean), math.exp(-hi), math.exp(-lo)
    elif scale == "difference":  # chal - base = -d
        effect, low, high = -mean, -hi, -lo
    else:
        effect, low, high = mean, lo, hi
    return Comparison(verdict, scale, effect, low, high, len(pairs), chal_failed, base_failed, tuple(diffs), fails)
