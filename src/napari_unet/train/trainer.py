"""The `Trainer`: one object owning the network, optimizer, sampler and batch size of a training run."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from ..conventions import IGNORE
from ..data import AnnotatedItems, PatchSampler, prepare_items
from ..device import autocast, free_memory, is_out_of_memory, memory_format
from ..model import Model, network_from_config
from ..postprocess import item_spacing
from ..publish import uninterruptible
from .settings import TrainSettings

__all__ = ["Trainer", "StepResult", "learning_rate_at", "masked_cross_entropy", "masked_loss", "edge_pixels"]

#: Steps in a row whose loss is NaN or infinite after which training has diverged: its network predicts
#: NaN everywhere (all background once segmented), so it is stopped with an error instead of returned.
DIVERGED_STEPS = 5


def learning_rate_at(fraction: float, base_lr: float, warmup: float = 0.05, floor: float = 0.05) -> float:
    """The schedule: linear warm-up from 10% over the first 5% of the run, then cosine down to 5%."""
    if fraction < warmup:
        return base_lr * (0.1 + 0.9 * fraction / warmup)
    t = min(1.0, (fraction - warmup) / (1 - warmup))
    return base_lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, edge_weight: float = 1.0):
    """Cross-entropy averaged over annotated pixels (IGNORE pixels carry no loss).

    With ``edge_weight`` above 1, pixels next to a change of class (`edge_pixels`) weigh that much more
    and the loss is the weighted mean.

    Returns
    -------
    (torch.Tensor, int or float)
        The loss and the total weight it averages: the number of annotated pixels (with ``edge_weight``,
        their summed weights), so that losses of several batches combine into that of all of them.
    """
    valid = target >= 0
    n_valid = valid.sum()
    if edge_weight == 1.0:
        loss = F.cross_entropy(logits.float(), target, ignore_index=IGNORE, reduction="sum")
        return loss / n_valid.clamp_min(1), int(n_valid)
    per_pixel = F.cross_entropy(logits.float(), target, ignore_index=IGNORE, reduction="none")
    weight = torch.where(edge_pixels(target), float(edge_weight), 1.0) * valid
    total = weight.sum()
    return (per_pixel * weight).sum() / total.clamp_min(1), float(total)


def edge_pixels(target: torch.Tensor) -> torch.Tensor:
    """Annotated pixels with a 4-connected neighbour of another annotated class: both sides of an outline.

    ``target`` is (N, *spatial); the result is a boolean tensor of the same shape.
    """
    edge = torch.zeros_like(target, dtype=torch.bool)
    for axis in range(1, target.ndim):
        n = target.shape[axis]
        if n < 2:
            continue
        a, b = target.narrow(axis, 0, n - 1), target.narrow(axis, 1, n - 1)
        change = (a != b) & (a >= 0) & (b >= 0)
        edge.narrow(axis, 0, n - 1).logical_or_(change)
        edge.narrow(axis, 1, n - 1).logical_or_(change)
    return edge


def masked_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "ce", edge_weight: float = 1.0):
    """The training loss ``kind`` over annotated pixels: ``"ce"`` (cross-entropy) or ``"ce+dice"``.

    ``"ce+dice"`` adds 1 - soft Dice of the non-background classes (channels 1..), pooled over the batch's
    annotated pixels as nnU-Net does, so thin, rare classes (the instance boundary) weigh as much as the
    large ones. ``edge_weight`` weighs the cross-entropy of the pixels along class changes
    (`masked_cross_entropy`). Returns the loss and the weight it averages, as `masked_cross_entropy`.
    """
    ce, n_valid = masked_cross_entropy(logits, target, edge_weight)
    if kind == "ce" or logits.shape[1] < 2:
        return ce, n_valid
    valid = (target >= 0).unsqueeze(1)
    prob = torch.softmax(logits.float(), dim=1)[:, 1:] * valid
    onehot = F.one_hot(target.clamp_min(0), logits.shape[1]).movedim(-1, 1)[:, 1:] * valid
    dims = (0,) + tuple(range(2, logits.ndim))
    inter = (prob * onehot).sum(dims)
    dice = (2 * inter + 1.0) / (prob.sum(dims) + onehot.sum(dims) + 1.0)
    return ce + (1 - dice.mean()), n_valid


@dataclass(frozen=True)
class StepResult:
    """What one `Trainer.step` did: a loss, or (out of memory) the warning of what was made smaller."""

    loss: float | None = None
    warning: str = ""


@dataclass
class _ValidationClock:
    """Validate about every 10% of the run, but spend at most ~5% of the time on it.

    The time limit depends on the clock, so it applies to time-budget runs only: an epochs run with a
    seed stays reproducible.
    """

    timed: bool
    next_fraction: float = 0.1
    seconds: float = 0.0
    last_time: float = 0.0

    def due(self, fraction: float, elapsed: float) -> bool:
        cheap_enough = not self.timed or elapsed - self.last_time >= 20 * self.seconds
        return fraction >= self.next_fraction and cheap_enough

    def ran(self, fraction: float, elapsed: float, seconds: float) -> None:
        self.next_fraction, self.last_time, self.seconds = fraction + 0.1, elapsed, seconds


class Trainer:
    """A training run's state and its parts: `step`, `validate`, best weights, schedule, `finish`.

    Built from resolved settings and the annotated items; randomness is drawn in a fixed order (network
    initialization, validation split, sampler), so a seeded run on the CPU is reproducible.

    Parameters
    ----------
    settings : TrainSettings
    annotated : AnnotatedItems
        From `resolve_settings` (or `napari_unet.data.collect_annotated`).
    start_time : float, optional
        `time.perf_counter()` when the run began (setup counts as training time); default: now.
    ranks : napari_unet.train.distributed.Ranks, optional
        Data-parallel training (torchrun): the network is wrapped in DistributedDataParallel, this rank
        samples its own patches, only rank 0 validates, and an epoch's patches are shared by the ranks.

    Attributes
    ----------
    network, optimizer, scaler, sampler
        The torch parts (``scaler`` only for fp16 mixed precision) and the `PatchSampler`.
    batch_size : int
        Patches per step; halved after running out of memory.
    step_count : int
        Optimizer steps so far.
    """

    def __init__(self, settings: TrainSettings, annotated: AnnotatedItems, start_time: float | None = None,
                 ranks=None):
        self.settings = s = settings
        self.ranks = ranks
        self.start_time = time.perf_counter() if start_time is None else start_time
        rng = np.random.default_rng(s.seed)
        if s.seed is not None:
            torch.manual_seed(s.seed)
        self.network = network_from_config(s.config)
        if s.init is not None:
            self.network.load_state_dict(s.init.network.state_dict())
        self.rng = rng  # the same on every rank: one validation split for all
        self._sampler_rng = rng if ranks is None else ranks.rank_rng(s.seed)  # each rank its own patches
        self.batch_size = s.batch_size
        self._set_items(annotated, s.patch_size)
        self.steps_per_epoch = max(10, math.ceil(self.region_px / (s.batch_size * float(np.prod(s.patch_size)))))
        if ranks is not None:  # each step sees world_size batches
            self.steps_per_epoch = math.ceil(self.steps_per_epoch / ranks.world_size)
        self.total_steps = s.epochs * self.steps_per_epoch if s.epochs is not None else None
        self._place_on_device()
        self._forward = self.network if ranks is None else ranks.wrap(self.network)
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=s.learning_rate, weight_decay=1e-4)
        self.step_count, self.last_loss = 0, None
        self._not_finite = 0  # steps in a row with a NaN/inf loss
        self.best_val_loss, self._best_state = None, None
        self.history = list(s.init.history) if s.init is not None else []
        self._clock = _ValidationClock(timed=s.time_budget is not None)
        self.network.train()

    def _set_items(self, annotated: AnnotatedItems, patch_size) -> None:
        s = self.settings
        items = prepare_items(annotated.items, s.mode, s.class_ids, (s.config.norm_low, s.config.norm_high),
                              patch_size, s.border_band, s.validation_fraction, self.rng,
                              boundary=s.instance_boundary, spacing=item_spacing(s.config.spacing, patch_size))
        sampler = PatchSampler(items, patch_size, self._sampler_rng, extra=s.augment)  # raises before anything is replaced
        self.items, self.sampler = items, sampler
        self.val_batches = sampler.validation_batches(s.batch_size, n_patches=max(s.batch_size, 8))
        if self.ranks is not None and not self.ranks.is_main:
            self.val_batches = []  # rank 0 validates (and keeps the best weights)
        self.region_px = sum(it.target.size for it in items)

    def use_annotations(self, annotated: AnnotatedItems) -> None:
        """Train from the next step on these annotations instead (live training: more was painted).

        The network, optimizer and step count are kept; the validation blocks are drawn again, so the
        best validation loss (and its weights) start over: losses on different blocks do not compare.

        Raises
        ------
        ValueError
            When nothing is left to train on; the previous annotations are then kept.
        """
        self._set_items(annotated, self.sampler.patch_size)
        self.best_val_loss, self._best_state = None, None

    def _place_on_device(self):
        dev = self.settings.device
        # channels_last: a CPU training step takes 0.8x the time (benchmarks/train_throughput.py)
        self.memory_format = memory_format(self.settings.dims, dev)
        self.network.to(dev)
        if self.memory_format is not None:
            self.network.to(memory_format=self.memory_format)
        fp16 = self.settings.precision == "fp16"
        self.scaler = torch.amp.GradScaler("cuda") if fp16 else None

    @property
    def summary(self) -> str:
        """One line saying what is trained on, for the start of a run."""
        ranks = f", {self.ranks.world_size} processes (data-parallel)" if self.ranks is not None else ""
        precision = "" if self.settings.precision == "fp32" else f" ({self.settings.precision} mixed precision)"
        return (f"training on {len(self.items)} region(s), {self.region_px} px, device {self.settings.device}"
                f"{precision}{ranks}")

    def elapsed(self) -> float:
        """Seconds since the run began."""
        return time.perf_counter() - self.start_time

    def fraction(self, elapsed: float) -> float:
        """Progress from 0 to 1: steps over total steps, or time over the budget, whichever is further."""
        fractions = []
        if self.total_steps is not None:
            fractions.append(self.step_count / self.total_steps)
        if self.settings.time_budget is not None:
            fractions.append(elapsed / self.settings.time_budget)
        return min(1.0, max(fractions))

    def _to_device(self, x: np.ndarray, layout: bool = False) -> torch.Tensor:
        t = torch.from_numpy(x).to(self.settings.device, non_blocking=True)
        return t.contiguous(memory_format=self.memory_format) if layout and self.memory_format else t

    def step(self, fraction: float) -> StepResult:
        """One optimizer step at the schedule's learning rate for ``fraction``; out of memory, shrink.

        Raises
        ------
        MemoryError
            Out of memory even with one patch of the smallest size.
        """
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate_at(fraction, self.settings.learning_rate)
        try:
            # sampled in this thread on purpose: a sampler thread competes with torch's per-operation
            # dispatch for the GIL and made CPU steps 2.4x slower
            self._optimize(*self.sampler.sample(self.batch_size))
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            if self.ranks is not None:  # one rank cannot shrink its batch alone: the others wait for it
                raise MemoryError(f"out of memory on {self.settings.device} in data-parallel training: use a "
                                  "smaller network (fewer base channels or less depth) or fewer processes per "
                                  "device") from None
            self.optimizer.zero_grad(set_to_none=True)
            free_memory(self.settings.device)
            return StepResult(warning=self.shrink_after_oom())
        self._not_finite = 0 if math.isfinite(self.last_loss) else self._not_finite + 1
        if self._not_finite >= DIVERGED_STEPS:
            raise ValueError(f"training diverged: the loss was not a finite number for {DIVERGED_STEPS} steps in a "
                             f"row; lower the learning rate (it was {self.settings.learning_rate:g})")
        return StepResult(loss=self.last_loss)

    def _optimize(self, x: np.ndarray, y: np.ndarray) -> None:
        dev = self.settings.device
        with autocast(dev, precision=self.settings.precision):
            logits = self._forward(self._to_device(x, layout=True))
        loss, n_valid = masked_loss(logits, self._to_device(y), self.settings.loss, self.settings.edge_weight)
        self.optimizer.zero_grad(set_to_none=True)
        if n_valid or self.ranks is not None:  # every rank joins the gradients' all-reduce
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        # Ctrl-C waits for the update and its count: weights are never half-updated, steps never miscounted
        stepping = n_valid or self.ranks is not None  # ranks all step, or their weights would drift apart
        with uninterruptible():
            if stepping and self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            elif stepping:
                self.optimizer.step()
            self.step_count += 1
            self.last_loss = float(loss.detach())

    def shrink_after_oom(self) -> str:
        """Halve the batch, then the patch; return the warning. MemoryError at one minimal patch."""
        dev = self.settings.device
        if self.batch_size > 1:
            self.batch_size //= 2
            return f"out of memory on {dev}: continuing with batches of {self.batch_size} patches"
        align = self.settings.align
        patch = self.sampler.patch_size
        smaller = tuple(max(2 * a, p // 2 // a * a) for p, a in zip(patch, align))
        if smaller == patch:
            raise MemoryError(f"out of memory on {dev} even with one patch of {patch}: use device='cpu' or a "
                              "smaller network (fewer base channels or less depth)")
        self.sampler.patch_size = smaller
        return f"out of memory on {dev}: continuing with patches of {smaller}"

    def validate(self) -> float:
        """Mean loss per annotated pixel (weighted) of the held-out patches; out of memory, in smaller batches."""
        while True:
            try:
                return self._validation_loss()
            except (RuntimeError, MemoryError) as exc:
                if not is_out_of_memory(exc):
                    raise
            # outside the except block, so the failed attempt's tensors (held by the traceback) are freed
            free_memory(self.settings.device)
            self.val_batches = _halve_batches(self.val_batches, self.settings.device)

    def _validation_loss(self) -> float:
        net = self.network
        net.eval()
        total, count = 0.0, 0
        try:
            with torch.inference_mode(), autocast(self.settings.device, precision=self.settings.precision):
                for x, y in self.val_batches:
                    loss, n = masked_loss(net(self._to_device(x, layout=True)), self._to_device(y),
                                          self.settings.loss, self.settings.edge_weight)
                    total += float(loss) * n
                    count += n
        finally:
            net.train()
        return total / max(count, 1)

    def _record(self, val: float, elapsed: float, keep_weights: bool = True) -> None:
        """Log a validation; remember the weights when they are the best so far."""
        self.history.append(dict(step=self.step_count, elapsed=round(elapsed, 3), loss=self.last_loss,
                                 val_loss=val))
        if self.best_val_loss is None or val < self.best_val_loss:
            self.best_val_loss = val
            self._best_state = ({k: v.detach().clone() for k, v in self.network.state_dict().items()}
                                if keep_weights else None)  # None: the current weights are the best

    def maybe_validate(self, fraction: float, elapsed: float) -> float | None:
        """Validate when due (see the throttle above) and track the best weights; the loss, or None."""
        if not self.val_batches or not self._clock.due(fraction, elapsed):
            return None
        t = time.perf_counter()
        val = self.validate_and_record(elapsed)
        self._clock.ran(fraction, elapsed, time.perf_counter() - t)
        return val

    def validate_and_record(self, elapsed: float) -> float:
        """Validate now, log it in the history and keep the weights when they are the best so far."""
        val = self.validate()
        self._record(val, elapsed)
        return val

    def snapshot(self) -> Model:
        """The current weights as a `Model` (a copy on the CPU, in eval mode); training goes on."""
        net = network_from_config(self.settings.config)
        net.load_state_dict({k: v.detach().to("cpu", copy=True) for k, v in self.network.state_dict().items()})
        return Model(network=net.eval(), config=self._trained_config(), history=list(self.history))

    def _trained_config(self):
        """The configuration with this run recorded; trained steps and seconds add to ``init``'s."""
        s, config = self.settings, self.settings.config
        return replace(config, trained_steps=config.trained_steps + self.step_count,
                       trained_seconds=config.trained_seconds + self.elapsed(), best_val_loss=self.best_val_loss,
                       patch_size=tuple(s.patch_size),
                       batch_size=int(self.batch_size), learning_rate=float(s.learning_rate),
                       border_band=int(s.border_band), loss=s.loss, edge_weight=float(s.edge_weight),
                       instance_boundary=s.instance_boundary, augment=tuple(s.augment), precision=s.precision)

    def finish(self, stopped: bool = False) -> Model:
        """The trained `Model`: the best weights seen, on the CPU, contiguous, in eval mode.

        A last validation runs unless the run was stopped (Stop answers at once with the best model).
        The configuration records the run; trained steps and seconds add to ``init``'s.
        """
        if self.val_batches and self.step_count > 0 and not stopped:
            self._record(self.validate(), self.elapsed(), keep_weights=False)
        if self._best_state is not None:
            self.network.load_state_dict(self._best_state)
        net = self.network.eval().cpu()
        net.to(memory_format=torch.contiguous_format)  # the returned network in torch's default layout
        return Model(network=net, config=self._trained_config(), history=self.history)


def _halve_batches(batches, device) -> list:
    """The validation batches in halves (the same patches, so the same loss); MemoryError at one patch."""
    if all(len(x) <= 1 for x, _ in batches):
        raise MemoryError(f"out of memory on {device} even for one validation patch: use device='cpu' or a "
                          "smaller network (fewer base channels or less depth)")
    halves = []
    for x, y in batches:
        h = max(1, len(x) // 2)
        halves.append((x[:h], y[:h]))
        if len(x) > h:
            halves.append((x[h:], y[h:]))
    return halves
