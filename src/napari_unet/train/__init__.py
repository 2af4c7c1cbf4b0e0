"""Training: settings resolved once, a `Trainer` with its parts, and `iter_train` / `train` over them.

`settings`
    `TrainSettings`, `resolve_settings`: the request validated, defaults applied, classes and the
    network's configuration resolved.
`trainer`
    `Trainer`: network, optimizer, sampler and batch size of one run; step, validation, best weights,
    the learning-rate schedule, out-of-memory shrink, the finished `Model`.
`loop`
    `iter_train` (yields `TrainEvent`s) and `train` (drains it).
`live`
    `iter_train_live`: a run until stopped that takes new annotations between steps and previews.
"""
from .loop import DEFAULT_TIME_BUDGET, TrainEvent, iter_train, train
from .live import LabelsTaken, LabelsUpdate, Latest, Preview, PreviewRequest, iter_train_live
from .settings import TrainSettings, resolve_settings
from .trainer import StepResult, Trainer, learning_rate_at, masked_cross_entropy, masked_loss

__all__ = ["TrainEvent", "iter_train", "train", "DEFAULT_TIME_BUDGET", "TrainSettings", "resolve_settings",
           "Trainer", "StepResult", "learning_rate_at", "masked_cross_entropy", "masked_loss", "iter_train_live", "Latest",
           "LabelsUpdate", "LabelsTaken", "PreviewRequest", "Preview"]
