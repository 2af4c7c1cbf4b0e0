"""Training: `iter_train` yields small progress events; `train` drains it and returns the model."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import data as D
from .device import amp_dtype, autocast, free_memory, is_out_of_memory, memory_format, resolve_device
from . import conventions as C
from .model import Model, ModelConfig, network_from_config
from .progress import drain

__all__ = ["TrainEvent", "iter_train", "train", "DEFAULT_TIME_BUDGET"]

DEFAULT_TIME_BUDGET = C.DEFAULT_TIME_BUDGET


@dataclass
class TrainEvent:
    """A progress report from `iter_train`.

    Attributes
    ----------
    kind : str
        ``"start"`` (data prepared), ``"step"`` (one optimizer step), ``"validation"`` (validation loss
        measured), ``"warning"`` (e.g. out of GPU memory: continuing with smaller batches; see
        ``message``) or ``"done"`` (the last event; ``model`` is set).
    step : int
        Optimizer steps so far.
    fraction : float
        Progress from 0 to 1 (steps over total steps, or elapsed over time budget).
    elapsed : float
        Seconds since training started.
    loss, val_loss, best_val_loss, lr : float or None
    model : Model or None
        The final model (the best by validation loss when some annotations were held out).
    stopped : bool
        True when training ended early because it was asked to stop.
    """

    kind: str
    step: int = 0
    fraction: float = 0.0
    elapsed: float = 0.0
    loss: float | None = None
    val_loss: float | None = None
    best_val_loss: float | None = None
    lr: float | None = None
    epoch: float = 0.0
    total_steps: int | None = None
    model: Model | None = None
    stopped: bool = False
    message: str = ""
    info: dict = field(default_factory=dict)


def _as_list(x, name):
    if isinstance(x, (list, tuple)):
        if not x:
            raise ValueError(f"{name} is empty: give at least one array")
        return list(x)
    return [x]


def _check_settings(mode, dims, time_budget, epochs):
    if mode not in ("semantic", "instance"):
        raise ValueError(f"mode must be 'semantic' (sparse strokes) or 'instance' (dense masks), got {mode!r}")
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims!r}")
    if time_budget is not None:
        if isinstance(time_budget, bool) or not isinstance(time_budget, (int, float)) \
                or not math.isfinite(time_budget) or time_budget <= 0:
            raise ValueError(f"time budget must be a positive number of seconds, got {time_budget!r}")
    if epochs is not None:
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs <= 0:
            raise ValueError(f"epochs must be a positive whole number, got {epochs!r}")


def _collect(images, labels, dims, channel_axis, mode):
    """Validate pairs; return [(image channels-first, labels ndarray, item index)] of annotated items."""
    images, labels = _as_list(images, "images"), _as_list(labels, "labels")
    if len(images) != len(labels):
        raise ValueError(f"got {len(images)} images but {len(labels)} label arrays: give one labels per image")
    out = []
    seen = set()
    n_channels = None
    for i, (img, lab) in enumerate(zip(images, labels)):
        name = f"labels[{i}]" if len(labels) > 1 else "labels"
        lab = D.check_labels(lab, name)
        if channel_axis is None and np.ndim(img) == lab.ndim + 1 and np.shape(img)[-1] in (3, 4) \
                and tuple(np.shape(img)[:-1]) == lab.shape:
            raise ValueError(f"image {i} looks like RGB(A) with shape {tuple(np.shape(img))}: pass "
                             "channel_axis=-1 to use its channels")
        img_cf = D.as_channels_first(img, channel_axis)
        if tuple(img_cf.shape[1:]) != lab.shape:
            hint = "" if channel_axis is not None else " (if the image has a channel axis, declare it with channel_axis)"
            raise ValueError(f"image {i} has spatial shape {tuple(img_cf.shape[1:])} but {name} has shape "
                             f"{lab.shape}: they must match{hint}")
        if n_channels is None:
            n_channels = img_cf.shape[0]
        elif img_cf.shape[0] != n_channels:
            raise ValueError(f"image {i} has {img_cf.shape[0]} channels but image 0 has {n_channels}")
        for idx in D.iter_items(lab.shape, dims):
            plane = lab[idx]
            values = np.unique(plane)
            values = values[values > 0]
            if mode == "semantic" and values.size == 0:
                continue
            seen.update(int(v) for v in values)
            out.append((img_cf, lab, idx))
    if not out or (mode == "instance" and not seen):
        what = "no annotation at all (every pixel is 0)" if mode == "semantic" else "no objects (every pixel is 0)"
        raise ValueError(f"the labels contain {what}: paint some {'strokes' if mode == 'semantic' else 'objects'} first")
    return out, sorted(seen), n_channels


def _default_patch(dims, device):
    if dims == 2:
        return (256,) * 2 if device.type == "cuda" else (128,) * 2
    return (64,) * 3


def _fit_patch(patch, items_shapes, align):
    """Shrink the patch to the largest item extent (rounded up to the alignment)."""
    largest = np.max(np.array(items_shapes), axis=0)
    return tuple(int(min(p, -(-int(s) // align) * align)) for p, s in zip(patch, largest))


def _lr_at(fraction, base_lr, warmup=0.05, floor=0.05):
    if fraction < warmup:
        return base_lr * (0.1 + 0.9 * fraction / warmup)
    t = min(1.0, (fraction - warmup) / (1 - warmup))
    return base_lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def _shrink_after_oom(sampler, batch_size, align, dev):
    """Halve the batch, then the patch, after running out of memory; give up at one minimal patch."""
    if batch_size > 1:
        batch_size //= 2
        return batch_size, f"out of memory on {dev}: continuing with batches of {batch_size} patches"
    patch = sampler.patch_size
    smaller = tuple(max(2 * align, p // 2 // align * align) for p in patch)
    if smaller == patch:
        raise MemoryError(f"out of memory on {dev} even with one patch of {patch}: use device='cpu' or a smaller "
                          "network (fewer base channels or less depth)")
    sampler.patch_size = smaller
    return batch_size, f"out of memory on {dev}: continuing with patches of {smaller}"


def _to_device(x: np.ndarray, dev: torch.device, fmt) -> torch.Tensor:
    """A batch as a tensor on ``dev``, in the network's memory format."""
    t = torch.from_numpy(x).to(dev, non_blocking=True)
    return t.contiguous(memory_format=fmt) if fmt is not None else t


def _masked_ce(logits, target):
    """Cross-entropy averaged over annotated pixels (IGNORE pixels carry no loss)."""
    n_valid = (target >= 0).sum()
    loss = F.cross_entropy(logits.float(), target, ignore_index=D.IGNORE, reduction="sum")
    return loss / n_valid.clamp_min(1), int(n_valid)


def iter_train(images, labels, *, mode: str = "semantic", dims: int = 2, depth: int = C.DEFAULT_DEPTH,
               base_channels: int = C.DEFAULT_BASE_CHANNELS, time_budget: float | None = None, epochs: int | None = None,
               init: Model | None = None, device="auto", seed: int | None = None,
               channel_axis: int | None = None, patch_size: int | Sequence[int] | None = None,
               batch_size: int | None = None, learning_rate: float | None = None,
               validation_fraction: float = 0.15, border_band: int = 3, stop=None):
    """Train a UNet on painted annotations, yielding `TrainEvent` progress reports.

    Parameters
    ----------
    images, labels : array-like or list of array-like
        Images (numpy, dask, zarr; any dtype; spatial axes last) and integer labels of the same spatial
        shape. Leading axes beyond ``dims`` (a stack or time series) are treated as separate items.
    mode : {"semantic", "instance"}
        ``semantic``: 0 = not annotated, 1 = background, 2.. = classes (sparse strokes are fine).
        ``instance``: dense masks, 0 = background, each id one object.
    dims : {2, 3}
        2D model (applied plane by plane to stacks) or 3D model.
    depth, base_channels : int
        Network size (ignored when ``init`` is given: its architecture is kept).
    time_budget : float, optional
        Seconds of training. When neither this nor ``epochs`` is given, 60 s.
    epochs : int, optional
        Number of epochs; an epoch is as many patches as cover the annotated regions once (at least 10
        steps). With both given, whichever ends first. Reproducible with ``seed`` on CPU.
    init : Model, optional
        Continue training (fine-tune) this model; its classes, normalization and architecture are kept.
    device : str
        ``"auto"`` (cuda, then mps, then cpu), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``.
    seed : int, optional
        Seeds patch sampling, augmentation and initialization.
    channel_axis : int, optional
        Axis of the images holding channels. Never guessed.
    patch_size, batch_size, learning_rate : optional
        Defaults: 128 px patches x 8 in 2D on CPU (256 on GPU), 64^3 x 2 in 3D, learning rate 2e-3
        (5e-4 when fine-tuning).
    validation_fraction : float
        Fraction of annotated blocks held out to pick the best model; skipped when too few annotations.
    border_band : int
        Semantic mode: unpainted pixels within this many px of a painted object that look like
        background are trained as background (see `napari_unet.data.add_border_band`). 0 disables.
    stop : object with ``is_set()``, optional
        E.g. a `threading.Event`; training ends at the next step once it is set, keeping the best model.

    Yields
    ------
    TrainEvent
        The last one has ``kind == "done"`` and the trained `Model`.
    """
    start_time = time.perf_counter()
    _check_settings(mode, dims, time_budget, epochs)
    if init is not None:
        if not isinstance(init, Model):
            raise TypeError("init must be a napari_unet Model (load one with napari_unet.load_model)")
        if init.mode != mode:
            raise ValueError(f"the model to continue from was trained in {init.mode!r} mode, not {mode!r}")
        dims = init.dims
    dev = resolve_device(device)
    if time_budget is None and epochs is None:
        time_budget = DEFAULT_TIME_BUDGET
    rng = np.random.default_rng(seed)
    if seed is not None:
        torch.manual_seed(seed)

    annotated, seen, n_channels = _collect(images, labels, dims, channel_axis, mode)
    if mode == "semantic":
        if init is not None:
            class_ids = list(init.config.class_ids)
            unknown = sorted(set(seen) - set(class_ids))
            if unknown:
                raise ValueError(f"labels contain class {unknown} that the model was not trained for (its classes"
                                 f" are {class_ids}): train a new model to add classes")
        else:
            class_ids = seen
            if len(class_ids) < 2:
                raise ValueError(f"only one class is painted (label {class_ids[0]}): paint at least two, e.g. 1 "
                                 "for background and 2 for objects")
    else:
        class_ids = list(C.INSTANCE_CLASS_IDS)

    if init is not None:
        if init.in_channels != n_channels:
            raise ValueError(f"the model takes {init.in_channels} channel(s) but the images have {n_channels}")
        config = init.config
        net = network_from_config(config)
        net.load_state_dict(init.network.state_dict())
        norm = (config.norm_low, config.norm_high)
    else:
        for name, v in (("depth", depth), ("base_channels", base_channels)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive whole number, got {v!r}")
        norm = D.compute_normalization([(img, idx) for img, _, idx in annotated])
        config = ModelConfig(mode=mode, dims=dims, depth=depth, base_channels=base_channels, in_channels=n_channels,
                             class_ids=tuple(class_ids), norm_low=tuple(norm[0]), norm_high=tuple(norm[1]))
        net = network_from_config(config)
    align = 2 ** config.depth

    if patch_size is None:
        patch = _default_patch(dims, dev)
    else:
        patch = (patch_size,) * dims if np.isscalar(patch_size) else tuple(patch_size)
        if len(patch) != dims or any(int(p) < align for p in patch):
            raise ValueError(f"patch_size must be {dims} sizes of at least {align} px, got {patch_size!r}")
        patch = tuple(int(-(-int(p) // align) * align) for p in patch)
    shapes = [lab[idx].shape for _, lab, idx in annotated]
    patch = _fit_patch(patch, shapes, align)
    if batch_size is None:
        batch_size = (16 if dev.type == "cuda" else 8) if dims == 2 else 2
    if learning_rate is None:
        learning_rate = 5e-4 if init is not None else 2e-3
    band = border_band if (mode == "semantic" and class_ids[0] == 1) else 0

    items = D.prepare_items(annotated, mode, class_ids, norm, patch, band, validation_fraction, rng)
    sampler = D.PatchSampler(items, patch, rng)
    val_batches = sampler.validation_batches(batch_size, n_patches=max(batch_size, 8))
    region_px = sum(it.target.size for it in items)
    steps_per_epoch = max(10, math.ceil(region_px / (batch_size * float(np.prod(patch)))))
    total_steps = epochs * steps_per_epoch if epochs is not None else None

    # channels_last: a CPU training step takes 0.8x the time (benchmarks/train_throughput.py)
    fmt = memory_format(dims, dev)
    net.to(dev)
    if fmt is not None:
        net.to(memory_format=fmt)
    use_amp = amp_dtype(dev) is not None
    scaler = torch.amp.GradScaler("cuda") if use_amp and amp_dtype(dev) == torch.float16 else None
    optimizer = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=1e-4)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True

    def train_step(x, y):
        x = _to_device(x, dev, fmt)
        y = torch.from_numpy(y).to(dev, non_blocking=True)
        with autocast(dev):
            logits = net(x)
        loss, n_valid = _masked_ce(logits, y)
        optimizer.zero_grad(set_to_none=True)
        if n_valid:
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
        return loss, n_valid

    def validate():
        net.eval()
        total, count = 0.0, 0
        with torch.inference_mode(), autocast(dev):
            for x, y in val_batches:
                loss, n = _masked_ce(net(_to_device(x, dev, fmt)), torch.from_numpy(y).to(dev))
                total += float(loss) * n
                count += n
        net.train()
        return total / max(count, 1)

    best_state, best_val = None, None
    history = list(init.history) if init is not None else []
    info = dict(patch_size=list(patch), batch_size=batch_size, steps_per_epoch=steps_per_epoch,
                validation=bool(val_batches), classes=list(config.class_names), device=str(dev))
    yield TrainEvent("start", elapsed=time.perf_counter() - start_time, total_steps=total_steps,
                     message=f"training on {len(items)} region(s), {region_px} px, device {dev}", info=info)

    step, fraction, loss_value, stopped = 0, 0.0, None, False
    # validate about every 10% of the run, but spend at most ~5% of the time on it
    next_val, val_seconds, last_val_time = 0.1, 0.0, 0.0
    net.train()
    try:
        while True:
            elapsed = time.perf_counter() - start_time
            fractions = []
            if total_steps is not None:
                fractions.append(step / total_steps)
            if time_budget is not None:
                fractions.append(elapsed / time_budget)
            fraction = min(1.0, max(fractions))
            if fraction >= 1.0:
                break
            if stop is not None and stop.is_set():
                stopped = True
                break
            lr = _lr_at(fraction, learning_rate)
            for group in optimizer.param_groups:
                group["lr"] = lr
            try:
                # sampled in this thread on purpose: a sampler thread competes with torch's per-operation
                # dispatch for the GIL and made CPU steps 2.4x slower
                loss, n_valid = train_step(*sampler.sample(batch_size))
            except (RuntimeError, MemoryError) as exc:
                if not is_out_of_memory(exc):
                    raise
                optimizer.zero_grad(set_to_none=True)
                free_memory(dev)
                batch_size, message = _shrink_after_oom(sampler, batch_size, align, dev)
                info.update(batch_size=batch_size, patch_size=list(sampler.patch_size))
                yield TrainEvent("warning", step=step, fraction=fraction, elapsed=time.perf_counter() - start_time,
                                 message=message)
                continue
            step += 1
            loss_value = float(loss.detach())
            elapsed = time.perf_counter() - start_time
            yield TrainEvent("step", step=step, fraction=fraction, elapsed=elapsed, loss=loss_value, lr=lr,
                             epoch=step / steps_per_epoch, total_steps=total_steps, best_val_loss=best_val)
            # the cost throttle depends on the clock, so it only applies to time-budget runs (epochs
            # runs with a seed stay reproducible)
            cheap_enough = time_budget is None or elapsed - last_val_time >= 20 * val_seconds
            if val_batches and fraction >= next_val and cheap_enough:
                next_val = fraction + 0.1
                tv = time.perf_counter()
                val = validate()
                val_seconds = time.perf_counter() - tv
                last_val_time = elapsed
                history.append(dict(step=step, elapsed=round(elapsed, 3), loss=loss_value, val_loss=val))
                if best_val is None or val < best_val:
                    best_val = val
                    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                yield TrainEvent("validation", step=step, fraction=fraction, elapsed=elapsed, loss=loss_value,
                                 val_loss=val, best_val_loss=best_val, epoch=step / steps_per_epoch,
                                 total_steps=total_steps)
    except KeyboardInterrupt:  # Ctrl-C inside a step: finish with the best model so far
        stopped = True

    if val_batches and step > 0 and not stopped:  # on Stop, answer at once with the best model seen
        val = validate()
        history.append(dict(step=step, elapsed=round(time.perf_counter() - start_time, 3), loss=loss_value,
                            val_loss=val))
        if best_val is None or val < best_val:
            best_val, best_state = val, None  # the current weights are the best
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval().cpu()
    net.to(memory_format=torch.contiguous_format)  # the returned network in torch's default layout
    elapsed = time.perf_counter() - start_time
    config = replace(config, trained_steps=config.trained_steps + step,
                     trained_seconds=config.trained_seconds + elapsed, best_val_loss=best_val,
                     patch_size=tuple(patch), batch_size=int(batch_size), learning_rate=float(learning_rate),
                     border_band=int(band))
    model = Model(network=net, config=config, history=history)
    yield TrainEvent("done", step=step, fraction=1.0 if not stopped else fraction, elapsed=elapsed, loss=loss_value,
                     val_loss=best_val, best_val_loss=best_val, model=model, stopped=stopped,
                     total_steps=total_steps, epoch=step / steps_per_epoch,
                     message=f"{'stopped' if stopped else 'finished'} after {step} steps in {elapsed:.1f} s")


def train(images, labels, *, progress=None, **kwargs) -> Model:
    """Train a UNet and return the `Model`; see `iter_train` for the parameters.

    Parameters
    ----------
    progress : tqdm-like, optional
        Receives ``update(n)`` calls (percent) and ``set_postfix(loss=...)``.

    Examples
    --------
    >>> model = train([image], [strokes], mode="semantic", time_budget=60)  # doctest: +SKIP
    """
    return drain(iter_train(images, labels, **kwargs), progress).model
