"""hamopt.theory.energy and EnergyMonitor on live optimizers: each energy recomputed by hand
from the optimizer's state, and clear errors for optimizers without one."""

from __future__ import annotations

import pytest
import torch

import hamopt
from hamopt.theory import EnergyMonitor, energy

D = torch.float64


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 3, generator=g, dtype=D)
    y = torch.randn(32, 1, generator=g, dtype=D)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1)).to(D)

    def loss_fn() -> torch.Tensor:
        return torch.nn.functional.mse_loss(model(x), y)

    return model, loss_fn


def _train(opt: torch.optim.Optimizer, loss_fn, steps: int) -> None:
    for _ in range(steps):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()


def _by_hand(name: str, opt: torch.optim.Optimizer, f: float) -> float:
    """The documented energies, recomputed with plain arithmetic from the state."""
    total = f
    for g in opt.param_groups:
        lr = float(g["lr"])
        for p in g["params"]:
            st = opt.state[p]
            if name == "momentum":
                total += 0.5 * lr * float((st["momentum_buffer"] ** 2).sum())
            elif name in ("adam", "grams", "adadiag"):
                b1, b2 = g["betas"][:2]
                k = float(st["step"])
                mh = st["exp_avg"] / (1 - b1 ** k)
                vh = st["exp_avg_sq"] / (1 - b2 ** k)
                total += lr / (2 * (1 - b1)) * float((mh ** 2 / (vh.sqrt() + g["eps"])).sum())
            elif name == "lion":
                b1, b2 = g["betas"]
                wd = g["weight_decay"]
                m = st["exp_avg"]
                x = p.detach()
                assert float((wd * x).abs().max()) <= 1 + 1e-9  # inside the box: K*(wd x) = 0
                c = lr * b1 / (lr * wd * (1 - b1) + (1 - b2))
                total += c * (float(m.abs().sum()) + wd * float((x * m).sum()))
            elif name == "hfac":
                b1 = g["betas"][0]
                if "mom_row" in st:
                    u, v, r, s = st["mom_row"], st["mom_col"], st["v_row"], st["v_col"]
                    mm, nn = r.numel(), s.numel()
                    kin = (nn / 4 * float((u ** 2 / (r / nn).sqrt()).sum())
                           + mm / 4 * float((v ** 2 / (s / mm).sqrt()).sum()))
                else:
                    kin = 0.5 * float((st["mom_full"] ** 2 / st["v_full"].sqrt()).sum())
                total += lr / (1 - b1) * kin
            elif name == "adafactor_m":
                b1 = g["betas"][0]
                M = st["exp_avg"]
                if "v_row" in st:
                    r, s = st["v_row"], st["v_col"]
                    kin = sum(float(M[i, j]) ** 2 * float(r.sum()) ** 0.5 / (float(r[i]) * float(s[j])) ** 0.5
                              for i in range(M.shape[0]) for j in range(M.shape[1]))
                else:
                    kin = float((M ** 2 / st["v_full"].sqrt()).sum())
                total += lr / (2 * (1 - b1)) * kin
    return total


@pytest.mark.parametrize("name,kw", [
    ("momentum", {}), ("adam", {}), ("grams", {}), ("adadiag", dict(svd_interval=3)), ("hfac", {}),
    ("adafactor_m", {}), ("lion", dict(weight_decay=0.5)),
])
def test_energy_matches_the_documented_formula(name: str, kw: dict) -> None:
    model, loss_fn = _problem()
    opt = hamopt.create(name, model.parameters(), lr=1e-2, **kw)
    assert energy(opt, 0.75) == 0.75  # no state yet: H is the loss
    _train(opt, loss_fn, 7)
    f = float(loss_fn().detach())
    assert energy(opt, f) == pytest.approx(_by_hand(name, opt, f), rel=1e-12)
    assert energy(opt, f) > f  # the kinetic term is positive once the moments are


def test_energy_monitor_on_a_live_optimizer() -> None:
    model, loss_fn = _problem(1)
    opt = hamopt.create("adam", model.parameters(), lr=1e-2)
    seen = []
    with EnergyMonitor(opt, loss_fn, every=3, callback=seen.append) as mon:
        _train(opt, loss_fn, 10)
        last = _by_hand("adam", opt, float(loss_fn().detach()))
    assert mon.steps == [3, 6, 9]
    assert seen == mon.history and len(mon.energies) == 3
    assert all(e > f for e, f in zip(mon.energies, mon.losses))
    # the monitor is detached on exit: more steps add nothing
    _train(opt, loss_fn, 3)
    assert len(mon.history) == 3
    # the step-9 record equals the by-hand energy at step 9 (recompute from a replay)
    model2, loss_fn2 = _problem(1)
    opt2 = hamopt.create("adam", model2.parameters(), lr=1e-2)
    _train(opt2, loss_fn2, 9)
    assert mon.history[-1]["energy"] == pytest.approx(_by_hand("adam", opt2, float(loss_fn2().detach())), rel=1e-12)
    assert last > 0


def test_unsupported_optimizers_name_the_families() -> None:
    model, _ = _problem()
    opt = hamopt.create("rmsprop", model.parameters())
    with pytest.raises(TypeError, match=r"no energy is known for RMSprop .*heavy_ball.*adam.*lionk"):
        energy(opt, 1.0)
    with pytest.raises(TypeError, match="RMSprop"):
        EnergyMonitor(opt, lambda: 1.0)
    with pytest.raises(ValueError, match="Invalid every: 0"):
        EnergyMonitor(hamopt.create("adam", model.parameters()), lambda: 1.0, every=0)
    with pytest.raises(ValueError, match="amsgrad"):
        energy(hamopt.create("amsgrad", model.parameters()), 1.0)
