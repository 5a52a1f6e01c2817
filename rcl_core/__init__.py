"""RCL Lab's engine: the Relative Contrastive Loss, its criteria, MoCo v3, data, training and evaluation.

Device-agnostic torch; never imports UI libraries (those live in ``lab``).
"""
from rcl_core.config import TrainConfig
from rcl_core.loss import RCLExplanation, RelativeContrastiveLoss

__all__ = ["RelativeContrastiveLoss", "RCLExplanation", "TrainConfig"]
__version__ = "0.1.0"
