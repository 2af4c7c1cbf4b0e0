"""``napari-unet train``: read, check, train (data-parallel under torchrun), save; Ctrl-C and SIGTERM stop it
cleanly (the first saves the best model so far, a second aborts without saving)."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

from .cli import EXIT_FAILURE

__all__ = ["train_command", "SAME_KEYPRESS_S"]

#: Under torchrun a Ctrl-C reaches each rank twice (from the terminal, and forwarded by torchrun).
SAME_KEYPRESS_S = 2.0


def train_command(args) -> int:
    """Run ``napari-unet train`` with parsed ``args``; returns the exit code."""
    from .io import read_image
    from .outputs import refuse_inputs_as_outputs
    from .memory import load_in_memory
    from .modelfile import check_model_output, load_model
    from .train.distributed import data_parallel

    if len(args.image) != len(args.labels):
        raise ValueError(f"got {len(args.image)} image(s) but {len(args.labels)} labels file(s): give one -l per -i")
    for image, labels in zip(args.image, args.labels):  # the image as its own labels trains nothing useful
        if os.path.exists(image) and os.path.exists(labels) and os.path.samefile(image, labels):
            raise ValueError(f"-i and -l both name {image!r}: give the image to -i and its annotations to -l")
    # before any work: the model never replaces an input, nor a file that is not a model
    refuse_inputs_as_outputs([args.output], args.image + args.labels + ([args.init] if args.init else []))
    out = check_model_output(args.output)
    images = [read_image(p) for p in args.image]
    if args.channel_axis is None:  # as predict does: the channel axis the files declare
        args.channel_axis = _declared_channel_axis(args.image)
    labels = [load_in_memory(read_image(p), f"labels file {p!r}") for p in args.labels]
    init = load_model(args.init) if args.init else None
    with data_parallel(args.device) as ranks:  # under torchrun: this process's rank (else None)
        return _train_run(args, images, labels, init, out, ranks)


def _declared_channel_axis(paths):
    """The channel axis the image files declare (ImageJ/OME-TIFF ``C``, OME-Zarr ``channel``), the same
    for every file, or None."""
    from .io import declared_channel_axis

    declared = {str(p): declared_channel_axis(p) for p in paths}
    if len(set(declared.values())) > 1:
        listed = ", ".join(f"{p}: {a}" for p, a in declared.items())
        raise ValueError(f"the images declare different channel axes ({listed}): give --channel-axis N")
    return next(iter(declared.values()))


def _train_run(args, images, labels, init, out, ranks):
    from .modelfile import save_model
    from .train import iter_train

    stop, abort = threading.Event(), threading.Event()
    main = ranks is None or ranks.is_main  # only rank 0 logs and writes the model
    stopped_at = []

    started = threading.Event()  # before the first step (data being prepared) there is nothing to save

    def on_sigint(signum, frame):
        if stop.is_set() or not started.is_set():  # a second Ctrl-C, or nothing trained yet: give up at once
            if stop.is_set() and ranks is not None and time.monotonic() - stopped_at[0] < SAME_KEYPRESS_S:
                return  # torchrun forwards the terminal's Ctrl-C that every rank got already
            abort.set()
            raise KeyboardInterrupt
        stop.set()
        stopped_at.append(time.monotonic())
        if main:
            print("\nstopping: finishing the current step and saving the best model so far "
                  "(Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)

    # SIGTERM (a cluster's time limit) also stops and saves: the first one like a first Ctrl-C
    previous = signal.signal(signal.SIGINT, on_sigint), signal.signal(signal.SIGTERM, on_sigint)
    try:
        last = None
        for event in iter_train(images, labels, mode=args.mode, dims=args.dims, depth=args.depth,
                                base_channels=args.base_channels, time_budget=args.time_budget,
                                epochs=args.epochs, init=init, device=args.device, seed=args.seed,
                                channel_axis=args.channel_axis, max_classes=args.max_classes, loss=args.loss,
                                edge_weight=args.edge_weight, instance_boundary=args.instance_boundary,
                                augment=args.augment, spacing=args.spacing, background=args.background,
                                context_planes=args.context_planes, mixed_precision=args.mixed_precision, stop=stop,
                                ranks=ranks):
            last = event
            if event.kind == "start":
                started.set()  # on every rank: from now on a first Ctrl-C stops and saves
            if not main:
                continue
            if event.kind == "start":
                print(event.message, file=sys.stderr, flush=True)
            elif event.kind == "validation":
                print(f"step {event.step:5d}  {event.elapsed:6.1f} s  loss {event.loss:.4f}  "
                      f"validation {event.val_loss:.4f}", file=sys.stderr, flush=True)
            elif event.kind == "step" and event.step % 20 == 0:
                print(f"step {event.step:5d}  {event.elapsed:6.1f} s  loss {event.loss:.4f}",
                      file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
    if abort.is_set():
        raise KeyboardInterrupt  # the second Ctrl-C: nothing is saved
    if not main:
        return 0
    if last.step == 0:  # an untrained network never replaces a model (or appears as one)
        print(f"error: {last.message}: nothing was saved; give a longer --time-budget or more --epochs",
              file=sys.stderr)
        return EXIT_FAILURE
    save_model(last.model, out)
    print(f"{last.message}; model saved to {out}", file=sys.stderr)
    return 0
