"""RCL Lab's engine: the Relative Contrastive Loss, its criteria, MoCo v3, data, training and evaluation.

Device-agnostic torch; never imports UI libraries (those live in ``lab``).
"""
import os as _os

# OpenMP threads that spin while waiting make torch on a busy 2-core machine (a laptop running a
# browser, a shared CI box) 2-25x slower; passive waiting costs about 8% when the cores are idle
# (benchmarks/README.md, "Training step"). Only effective when rcl_core is imported before torch;
# a value the user set wins (OMP_WAIT_POLICY=ACTIVE for dedicated machines).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from rcl_core.config import TrainConfig
from rcl_core.loss import RCLExplanation, RelativeContrastiveLoss

__all__ = ["RelativeContrastiveLoss", "RCLExplanation", "TrainConfig"]
__version__ = "0.1.0"
