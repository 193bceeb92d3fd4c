"""Theory you can run: each optimizer family's ODE and energy, checked numerically.

The systems follow ``THEORY.md`` (the seeds' continuous-time systems with verified
constants and conditions, and corrections where a seed is wrong):

- :mod:`.systems`: one class per family (heavy ball, Adafactor-m, the factored first-order
  system, H-Fac, Adam/AdaDiag/AdaDiag++, Grams/Cautious, Lion-K), each with its vector
  field, energy ``H``, exact ``dH/dt`` and the condition for ``dH/dt <= 0``, and Lion-K in
  discrete time (:class:`LionKDiscreteSystem`: iterate (15), its energy and Theorem 4.1's bound);
- :func:`integrate`: a float64 fixed-step RK4 integrator returning the trajectory, the
  energy and the condition along it;
- :func:`energy` and :class:`EnergyMonitor`: the energy of a live hamopt/torch optimizer,
  and a step hook that logs it during training;
- :mod:`.claims`: what ``hamopt theory`` checks; :mod:`.trajectories`: what ``hamopt
  trajectories`` draws.

This package calls only the public optimizer API (``hamopt.create``, the optimizer classes,
``optimizer.state``, ``optimizer.param_groups`` and the Lion-K kernels of
:mod:`hamopt.transforms`); the optimizers never import it.
"""

from .integrate import Trajectory, integrate, rk4_step
from .kernels import conjugate_subgradient, constraint_norm
from .live import SUPPORTED, EnergyMonitor, energy
from .objectives import get_objective
from .systems import (
    AdafactorMSystem,
    AdamSystem,
    FactoredSystem,
    GramsSystem,
    HeavyBallSystem,
    HFacSystem,
    LionKDiscreteSystem,
    LionKSystem,
    System,
)

__all__ = [
    "SUPPORTED",
    "AdafactorMSystem",
    "AdamSystem",
    "EnergyMonitor",
    "FactoredSystem",
    "GramsSystem",
    "HFacSystem",
    "HeavyBallSystem",
    "LionKDiscreteSystem",
    "LionKSystem",
    "System",
    "Trajectory",
    "conjugate_subgradient",
    "constraint_norm",
    "energy",
    "get_objective",
    "integrate",
    "rk4_step",
]
