"""Named optimizers, one module per paper family: each class is its defaults and its chain.

The registry table (:mod:`hamopt.registry`) lists them with their papers and memory
formulas; these modules never import it.

- :mod:`.classic`  the lecture's optimizers that torch.optim ships, as configured torch classes (seed 002)
- :mod:`.lecture`  the lecture's optimizers torch lacks: signSGD, AdaMod, diffGrad, Lookahead,
  Ranger, Sophia (seed 002)
- :mod:`.hfac`     Adafactor-m, signFSGD, LionFactor, H-Fac, AdamW variant (seed 000)
- :mod:`.adadiag`  AdaDiag, AdaDiag++, AdafacDiag, AdafacDiag++ (seed 001)
- :mod:`.ams`      AMS, Grams, C-AdamW, C-Lion (seed 003)
- :mod:`.lionk`    Lion-K and its kernels, Lion (seed 004)
"""

from . import adadiag, ams, classic, hfac, lecture, lionk
from .adadiag import *  # noqa: F403
from .ams import *  # noqa: F403
from .hfac import *  # noqa: F403
from .lecture import *  # noqa: F403
from .lionk import *  # noqa: F403

__all__ = [n for m in (adadiag, ams, hfac, lecture, lionk) for n in m.__all__]
_ = classic
