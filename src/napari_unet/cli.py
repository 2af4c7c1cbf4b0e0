"""The ``napari-unet`` command: train, predict, export, info. Needs no display."""
from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
import warnings
from contextlib import ExitStack
from pathlib import Path

from . import conventions as C
from ._streams import ReaderMayLeave
from .stitch import DEFAULT_STITCH_THRESHOLD

__all__ = ["main", "build_parser"]

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1


class _UsageError(Exception):
    pass


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's time limit, ``kill``): handled like Ctrl-C, so nothing is left half-done."""


def _on_sigterm(signum, frame):
    raise _Terminated


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        raise _UsageError(message)


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"the time budget must be a positive number of seconds, got {text}")
    return value


def _tile(text):
    if text.lower() in ("none", "whole", "0"):
        if text == "0":
            raise argparse.ArgumentTypeError("tile size 0 is not valid: give a size such as 512, or 'none' for "
                                             "one pass over the whole image")
        return None
    if text.lower() == "auto":
        return "auto"
    parts = text.lower().split("x")
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a tile size like 512, 64x256x256, 'auto' or 'none', got {text!r}") from None
    if any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"tile sizes must be positive, got {text}")
    return sizes[0] if len(sizes) == 1 else sizes


def _overlap(text):
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an overlap between 0 and 1 such as 0.5, got {text!r}") from None


def _fraction(text):
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction such as 0.2 (0 keeps every object), got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="napari-unet", description="Train a UNet on annotations and segment microscopy images.")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    t = sub.add_parser("train", help="train a model from images and labels")
    t.add_argument("-i", "--image", action="append", required=True, help="image file (.tif/.zarr/.npy); repeat for more")
    t.add_argument("-l", "--labels", action="append", required=True, help="labels file, one per image")
    t.add_argument("-o", "--output", required=True, help="model file to write (e.g. model.pt)")
    t.add_argument("--mode", choices=["semantic", "instance"], default="semantic",
                   help="semantic: sparse strokes (0 = not annotated, 1 = background, 2.. = classes); "
                        "instance: dense masks (0 = background, each id one object)")
    t.add_argument("--dims", type=int, choices=[2, 3], default=2)
    t.add_argument("--depth", type=_positive_int, default=C.DEFAULT_DEPTH)
    t.add_argument("--base-channels", type=_positive_int, default=None,
                   help=f"feature maps of the first level (default {C.DEFAULT_BASE_CHANNELS}, but 32 for 2D instance "
                        "models where training runs in mixed precision: GPUs, CPUs with bf16 units; 32 doubles "
                        "capacity, ~2.4x slower in fp32)")
    t.add_argument("--time-budget", type=_seconds, default=None, help=f"seconds of training (default {C.DEFAULT_TIME_BUDGET:g})")
    t.add_argument("--epochs", type=_positive_int, default=None)
    t.add_argument("--init", default=None, help="model file to continue training from (fine-tuning, at a learning "
                   "rate of 1e-4 instead of 2e-3)")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--channel-axis", type=int, default=None, help="axis of the image holding channels")
    t.add_argument("--spacing", type=float, nargs="+", default=None, metavar="SIZE",
                   help="voxel size per spatial axis, e.g. --spacing 3 1 1 (Z, Y, X) for planes 3x further apart "
                        "than the pixels: a 3D model then pools Y and X first (default: isotropic)")
    t.add_argument("--background", type=int, default=None, metavar="PX",
                   help="uneven illumination or haze: the network subtracts a smooth local background "
                        "estimated over windows of PX pixels (about 3 object diameters, e.g. 61 for nuclei "
                        "20 px across); stored in the model (default: none)")
    t.add_argument("--context-planes", type=int, default=None, metavar="K",
                   help="2D models on z-stacks: read each plane with the K planes above and below it (2.5D; "
                        "K about the objects' half-height in planes: 3 for nuclei 20 px across on planes 3 px "
                        "apart); stored in the model, and "
                        "prediction reads the neighbours the same way (default: 0, each plane alone)")
    t.add_argument("--max-classes", type=_positive_int, default=C.MAX_SEMANTIC_CLASSES,
                   help=f"semantic mode: the most painted classes accepted (default {C.MAX_SEMANTIC_CLASSES}; "
                        "more ids usually mean instance masks)")
    t.add_argument("--loss", choices=C.LOSSES, default=None, help="training loss (default ce; a fine-tuned model's)")
    t.add_argument("--edge-weight", type=float, default=None, help="cross-entropy weight (>= 1) of pixels along "
                   "class changes: the outlines (default: 3 for a new 2D instance model, else 1; "
                   "fine-tuning keeps the model's)")
    t.add_argument("--instance-boundary", choices=C.INSTANCE_BOUNDARIES, default=None,
                   help="instance mode: how the boundary class is drawn (default inner)")
    t.add_argument("--augment", default=None, metavar="NAMES", help="extra augmentations, comma-separated: "
                   f"{', '.join(C.AUGMENTATIONS)}, or none (default none)")
    t.add_argument("--fp32", action="store_const", const=False, default=None, dest="mixed_precision",
                   help="train in full fp32 precision (default: mixed precision on GPUs and on CPUs with bf16 "
                        "units, where a step takes ~0.4x the time)")

    r = sub.add_parser("predict", help="segment an image with a trained model")
    r.add_argument("model", help="model file")
    r.add_argument("input", help="image file (.tif/.zarr/.npy)")
    r.add_argument("-o", "--output", required=True, help="labels file to write (.tif/.zarr/.npy)")
    r.add_argument("--probabilities", default=None, help="also write class probabilities here")
    r.add_argument("--tile", type=_tile, default="auto", help="tile size (e.g. 512 or 32x256x256), 'auto' or 'none'")
    r.add_argument("--batch-size", type=_positive_int, default=None)
    r.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    r.add_argument("--channel-axis", type=int, default=None)
    r.add_argument("--stitch-planes", type=_overlap, nargs="?", const=True, default=None, metavar="OVERLAP",
                   help="2D instance model on a z-stack: link each plane's objects to the previous plane's "
                        "(at least OVERLAP of the smaller object inside the other, default "
                        f"{DEFAULT_STITCH_THRESHOLD}) so each object gets one 3D id, then trim the linked objects: "
                        "small end sections and, in deep stacks, single-plane objects are dropped")
    r.add_argument("--no-stitch-trim", dest="stitch_trim", action="store_false",
                   help="with --stitch-planes: keep every linked object whole (no end sections or single-plane "
                        "objects dropped), e.g. for thin objects that are real")
    r.add_argument("--min-fraction", type=_fraction, default=None, metavar="F",
                   help="instance models: drop objects smaller than F of the median object (fragments, debris; "
                        "default 0.2); 0 keeps every object")
    r.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average 8 turned/mirrored views of each tile (8x the time)")
    r.add_argument("--fp32", action="store_const", const=False, default=None, dest="mixed_precision",
                   help="forward passes in full fp32 precision, exact on every machine (default: bf16 mixed "
                        "precision on GPUs and on CPUs with bf16 units, about half the time)")
    r.add_argument("--block", type=_positive_int, default=None,
                   help="process blocks of N px per side (instance labels of any size; on a cluster a multiple of "
                        "the output chunks: 512 in 2D, 64 in 3D)")
    where = r.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_positive_int, default=None,
                       help="run on a local dask cluster of N worker processes (zarr outputs)")
    where.add_argument("--scheduler", default=None, help="run on an existing dask cluster (e.g. tcp://host:8786)")

    _add_export_parser(sub)

    n = sub.add_parser("info", help="describe a model file")
    n.add_argument("model")
    return p


def _predict(args):
    from .io import LABELS_ATTRS, declared_channel_axis, read_image
    from .modelfile import load_model
    from .omezarr import label_target
    from .outputs import OutputFile, check_output_path, commit_together, refuse_inputs_as_outputs
    from .predict import plan_prediction, run_prediction
    from .provenance import PROVENANCE_KEY, label_classes, provenance

    if args.workers is not None or args.scheduler is not None:
        return _predict_on_cluster(args)

    outputs = [Path(args.output)] + ([Path(args.probabilities)] if args.probabilities else [])
    refuse_inputs_as_outputs(outputs, [args.input, args.model])  # under any spelling: links, case
    target = label_target(args.output, image=args.input)  # IMAGE.ome.zarr/labels/NAME, else None
    for o in outputs[1 if target else 0:]:
        check_output_path(o)
    model = load_model(args.model)
    image = read_image(args.input)
    declared = declared_channel_axis(args.input) if args.channel_axis is None else None
    channel_axis = args.channel_axis if args.channel_axis is not None else declared
    # one plan, checked before any file is created; the one described is the one run
    try:
        plan = plan_prediction(model, image, labels=True, probabilities=bool(args.probabilities), tile=args.tile,
                               batch_size=args.batch_size, device=args.device, channel_axis=channel_axis,
                               stitch_planes=args.stitch_planes, stitch_trim=args.stitch_trim, tta=args.tta,
                               min_fraction=args.min_fraction, mixed_precision=args.mixed_precision)
    except ValueError as exc:
        if declared is None:
            raise
        raise ValueError(f"{exc} (the file declares axis {declared} as its channels; --channel-axis overrides "
                         "that)") from None
    made = {PROVENANCE_KEY: provenance(model, model_file=args.model, plan=plan, channel_axis=channel_axis)}
    print(plan.describe(), file=sys.stderr, flush=True)  # the size of the work, before any output exists
    with ExitStack() as outputs:
        labels_out = outputs.enter_context(
            target.output(plan.shape, plan.labels_dtype, channel_axis=channel_axis, attrs=made,
                          classes=label_classes(model)) if target else
            OutputFile(args.output, plan.shape, plan.labels_dtype, attrs={**LABELS_ATTRS, **made}))
        prob_out = None
        if args.probabilities:  # written from the same forward passes as the labels
            prob_out = outputs.enter_context(OutputFile(args.probabilities, plan.probabilities_shape, "float32",
                                                        attrs=made))
        if args.block is not None:  # block by block: instance labels of items larger than the memory
            from .blockwise import iter_blockwise

            _drain_predict(iter_blockwise(plan, labels_out=labels_out.array, block=args.block,
                                          probabilities_out=prob_out.array if prob_out else None))
        else:
            _drain_predict(run_prediction(plan, labels_out=labels_out.array,
                                          probabilities_out=prob_out.array if prob_out else None))
        # both files appear together: never new probabilities beside old or missing labels
        commit_together(*[o for o in (labels_out, prob_out) if o is not None])
    print(f"labels written to {args.output}" + (f", probabilities to {args.probabilities}" if args.probabilities else ""),
          file=sys.stderr)
    return 0


def _predict_on_cluster(args):
    """``--workers`` / ``--scheduler``: the blocks run on a dask cluster (`napari_unet.distributed`)."""
    from .distributed import iter_segment

    events = iter_segment(args.model, args.input, out=args.output, probabilities_out=args.probabilities,
                          client=args.scheduler, workers=args.workers, block=args.block, tile=args.tile,
                          batch_size=args.batch_size, device=args.device, channel_axis=args.channel_axis,
                          stitch_planes=args.stitch_planes, stitch_trim=args.stitch_trim, tta=args.tta,
                          min_fraction=args.min_fraction, mixed_precision=args.mixed_precision)
    # channel_axis None: each file's declared axis
    first = next(events)
    print(first.message, file=sys.stderr, flush=True)
    _drain_predict(events)
    print(f"labels written to {args.output}" + (f", probabilities to {args.probabilities}" if args.probabilities else ""),
          file=sys.stderr)
    return 0


def _drain_predict(events):
    shown = -1
    for event in events:
        pct = int(event.fraction * 100)
        if pct // 10 > shown // 10:
            shown = pct
            print(f"  {pct:3d}%  {event.elapsed:6.1f} s", file=sys.stderr, flush=True)


def _add_export_parser(sub):
    e = sub.add_parser("export", help="write a model as a bioimage.io model package (.zip)")
    e.add_argument("model", help="model file (.pt)")
    e.add_argument("-o", "--output", required=True, help="package to write (e.g. model.zip)")
    e.add_argument("--name", default=None, help="model name (default: made from the model)")
    e.add_argument("--description", default=None, help="one-paragraph description (default: made from the model)")
    e.add_argument("--author", action="append", default=None, help="author name; repeat for more (default: login name)")
    e.add_argument("--license", default=None, help="SPDX license id (default CC-BY-4.0)")
    e.add_argument("--cite", nargs=2, action="append", default=None, metavar=("TEXT", "DOI_OR_URL"),
                   help="a citation; repeat for more (default: the U-Net paper)")
    e.add_argument("--test-image", default=None, help="test input and cover image (default: synthetic nuclei)")
    e.add_argument("--onnx", action="store_true", help="also write ONNX weights (needs: pip install onnx onnxruntime)")


def _export(args):
    from .bioimageio import export_package
    from .io import read_image
    from .outputs import refuse_inputs_as_outputs

    refuse_inputs_as_outputs([args.output], [args.model] + ([args.test_image] if args.test_image else []))
    try:
        written = export_package(args.model, args.output, name=args.name, description=args.description,
                                 authors=args.author, license=args.license, cite=args.cite,
                                 test_image=read_image(args.test_image) if args.test_image else None,
                                 onnx=args.onnx)
    except ImportError as exc:  # the extra is missing: say how to get it
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"bioimage.io package written to {written}", file=sys.stderr)
    return 0


def _info(args):
    from .modelfile import load_model

    print(load_model(args.model).describe())
    return 0


def main(argv=None) -> int:
    """Entry point of the ``napari-unet`` command; returns the exit code."""
    parser = build_parser()
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm) if on_main_thread else None
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = ReaderMayLeave(sys.stdout), ReaderMayLeave(sys.stderr)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return _run(parser, argv)
    finally:
        sys.stdout, sys.stderr = streams
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous_sigterm)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def _run(parser, argv) -> int:
    from .publish import InterruptedAfterCommit

    try:
        args = parser.parse_args(argv)
        if args.version:
            from . import __version__

            print(__version__)
            return 0
        if args.command is None:
            parser.print_help()
            return EXIT_BAD_INPUT
        from ._cli_train import train_command

        return {"train": train_command, "predict": _predict, "export": _export, "info": _info}[args.command](args)
    except _UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ValueError, TypeError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
            PermissionError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except MemoryError as exc:
        print(f"error: {_one_line(exc) or 'out of memory'}", file=sys.stderr)
        return EXIT_FAILURE
    except InterruptedAfterCommit as exc:  # the signal came while the finished outputs were moved into place
        print(f"interrupted, but the output was complete and is written: {', '.join(map(str, exc.paths))}",
              file=sys.stderr)
        return 130
    except KeyboardInterrupt as exc:
        print("error: interrupted; no output was written", file=sys.stderr)
        return 143 if isinstance(exc, _Terminated) else 130
    except Exception as exc:  # anything unexpected: still one line, but say it is a failure, not bad input
        print(f"error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILURE


#: Core errors speak of parameters (``channel_axis=``, ``tile=``, ``device='cpu'``); the command line
#: shows them as its flags.
_FLAGS = [(re.compile(r"\bchannel_axis=\.\.\."), "--channel-axis N"),
          (re.compile(r"\bmode='(\w+)'"), r"--mode \1"),
          (re.compile(r"\bmax_classes=(\d+)"), r"--max-classes \1"),
          (re.compile(r"\bchannel_axis=(-?\d+)"), r"--channel-axis \1"),
          (re.compile(r"\btile=None\b"), "--tile none"),
          (re.compile(r"\btile='auto'"), "--tile auto"),
          (re.compile(r"\btile="), "--tile"),
          (re.compile(r"\bbatch_size="), "--batch-size"),
          (re.compile(r"\bleave stitch_planes=None"), "leave out --stitch-planes"),
          (re.compile(r"\bstitch_planes=True"), "--stitch-planes"),
          (re.compile(r"\bstitch_trim=False"), "--no-stitch-trim"),
          (re.compile(r"\bstitch_planes\b"), "--stitch-planes"),
          (re.compile(r"\bmin_fraction\b"), "--min-fraction"),
          (re.compile(r"\bleave background out"), "leave out --background"),
          (re.compile(r"\bleave context_planes out"), "leave out --context-planes"),
          (re.compile(r"\bcontext_planes=(\d+)"), r"--context-planes \1"),
          (re.compile(r"\bcontext_planes\b"), "--context-planes"),
          (re.compile(r"\bdevice='([\w:]+)'"), r"--device \1")]


def as_flags(text: str) -> str:
    """A core error message with its parameter names written as this command's flags."""
    for pattern, flag in _FLAGS:
        text = pattern.sub(flag, text)
    return text


def _one_line(exc) -> str:
    text = str(exc)
    if isinstance(exc, (FileNotFoundError, PermissionError)) and exc.filename and exc.strerror:
        text = f"{exc.strerror}: {exc.filename!r}"
    elif isinstance(exc, (ValueError, TypeError, MemoryError)):
        text = as_flags(text)
    return " ".join(text.split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
