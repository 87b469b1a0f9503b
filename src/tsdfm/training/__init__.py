"""Training stages on one shared loop (:mod:`tsdfm.training.loop`)."""

from tsdfm.training.loop import FitResult, Trainer
from tsdfm.training.teacher import train_teacher

__all__ = ["FitResult", "Trainer", "train_teacher"]
