"""``napari-unet export``: a model as a bioimage.io model package (format 0.5), built with bioimageio.spec.

The package holds the rdf (``rdf.yaml``), a README, a cover, test input and output tensors, and the weights
twice: ``pytorch_state_dict`` with the architecture source (`napari_unet.unet`, a file needing only torch)
and ``torchscript`` (for Java consumers such as deepImageJ). The network shipped is `UNetProbabilities`,
so every consumer gets class probabilities; the stored normalization is the ``scale_linear``
preprocessing. napari-unet's own configuration goes into the rdf's ``config`` field, from which
`load_package` rebuilds the model without running anything from the package.
"""
from __future__ import annotations

import shutil
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..model import Model, network_kwargs
from ..modelfile import check_file_output
from ..outputs import atomic_path
from ..unet import UNetProbabilities
from ._describe import cover_image, readme_text, valid_sizes
from ._rdf import DEFAULT_CITE, DEFAULT_LICENSE, ONNX_OPSET, check_options, describe, scale_linear
from ._read import PACKAGE_SUFFIX, load_package

__all__ = ["export_package", "check_package_output", "EXTRA_HINT", "ONNX_HINT", "DEFAULT_LICENSE", "DEFAULT_CITE"]

EXTRA_HINT = 'exporting a bioimage.io package needs the bioimageio extra: pip install "napari-unet[bioimageio]"'
ONNX_HINT = "ONNX weights need the onnx package (and onnxruntime to run them): pip install onnx onnxruntime"


def _require_spec():
    try:
        import bioimageio.spec  # noqa: F401
        from bioimageio.spec.model import v0_5
    except ImportError:
        raise ImportError(EXTRA_HINT) from None
    return v0_5


def check_package_output(path) -> Path:
    """Check that a package may be written to ``path``, before any work is done for it.

    The name ends in ``.zip``, its folder exists, and an existing file there is replaced only when it
    is a package napari-unet exported itself.
    """
    return check_file_output(path, (PACKAGE_SUFFIX,), "model.zip", load_package, "bioimage.io package",
                             "a package exported by napari-unet")


@dataclass(frozen=True)
class _Files:
    weights: Path
    torchscript: Path
    architecture: Path
    test_input: Path
    test_output: Path
    cover: Path
    readme: Path
    onnx: Path | None = None


def export_package(model, path, *, name: str | None = None, description: str | None = None,
                   authors=None, license: str | None = None, cite=None, test_image=None, onnx: bool = False) -> Path:
    """Write ``model`` as a bioimage.io model package (a ``.zip``), atomically.

    Parameters
    ----------
    model : Model or path
        A model, or a model file (``.pt``, or a package napari-unet exported).
    path : path
        The ``.zip`` to write. An existing file is replaced only if it is a napari-unet package.
    name, description : str, optional
        Default: made from the model (dimensions, mode, classes, training record).
    authors : list of str, optional
        Author names (default: the login name).
    license : str, optional
        An SPDX license id (default ``CC-BY-4.0``).
    cite : list of (text, doi or url), optional
        Citations (default: the U-Net paper).
    test_image : array-like, optional
        Test input, ``(C, *spatial)`` or spatial only for one channel; the centre is cropped to a valid
        size. Default: a synthetic nuclei image. It and its segmentation make the cover.
    onnx : bool, default False
        Also write ONNX weights (needs the ``onnx`` package).

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    ImportError
        Without the ``bioimageio`` extra (the message says how to install it).
    ValueError
        For a bad model, output path or description field (one line saying what to change).
    """
    v0_5 = _require_spec()
    if onnx:
        try:
            import onnx as _onnx  # noqa: F401
        except ImportError:
            raise ImportError(ONNX_HINT) from None
    check_options(v0_5, name=name, license=license, cite=cite)
    path = check_package_output(path)
    if not isinstance(model, Model):
        from ..modelfile import load_model

        model = load_model(model)
    if model.config.context_planes:
        # a package's consumers feed one plane's channels; nothing in the format builds the neighbours
        raise ValueError(f"this model reads each plane with {model.config.context_planes} neighbouring plane(s) "
                         "on each side (context_planes), which bioimage.io packages cannot describe: export a "
                         "model trained without context_planes")
    raw = _test_input(model, test_image)
    with tempfile.TemporaryDirectory(prefix="napari-unet-export-") as tmp:
        files = _write_files(model, raw, Path(tmp), onnx=onnx)
        descr = describe(v0_5, model, files, name=name, description=description, authors=authors,
                         license=license, cite=cite)
        from bioimageio.spec import save_bioimageio_package

        with atomic_path(path) as out, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            save_bioimageio_package(descr, output_path=out)
    return path


def _test_input(model: Model, image) -> np.ndarray:
    """(C, *spatial) float32 raw intensities of a valid size: the centre of ``image``, or synthetic nuclei."""
    low, step = valid_sizes(model)
    if image is None:
        from ..synthetic import make_nuclei

        side = low + -(-max(0, (256 if model.dims == 2 else 64) - low) // step) * step
        img, _ = make_nuclei((side,) * model.dims, seed=0)
        return np.repeat(img[None].astype(np.float32), model.in_channels, axis=0)
    shape = tuple(np.shape(image))
    if len(shape) == model.dims and model.in_channels == 1:
        image, shape = image[None], (1,) + shape
    if len(shape) != model.dims + 1 or shape[0] != model.in_channels:
        raise ValueError(f"the test image must be (channels={model.in_channels}, {model.dims} spatial axes), "
                         f"got shape {shape}")
    cap = 512 if model.dims == 2 else 96
    if min(shape[1:]) < low:
        raise ValueError(f"the test image is too small ({shape[1:]}): the package's inputs are at least {low} "
                         "pixels on each side")
    sizes = [low + (min(s, max(cap, low)) - low) // step * step for s in shape[1:]]
    crop = tuple(slice((s - n) // 2, (s - n) // 2 + n) for s, n in zip(shape[1:], sizes))
    # only the crop of a lazy (dask, zarr, memory-mapped) image is read
    raw = np.ascontiguousarray(np.asarray(image[(slice(None),) + crop]), dtype=np.float32)
    if not np.isfinite(raw).all():  # the package's test tensors would hold NaN: its own test cannot pass
        raise ValueError("the test image has NaN or infinite values in its centre (the package's test input): "
                         "give a test image without missing values")
    return raw


def _package_network(model: Model) -> UNetProbabilities:
    c = model.config
    net = UNetProbabilities(**network_kwargs(c))
    net.load_state_dict(model.network.state_dict(), strict=True)
    return net.eval()


def _write_files(model: Model, raw: np.ndarray, folder: Path, onnx: bool = False) -> _Files:
    from .. import unet

    net = _package_network(model)
    gain, offset = scale_linear(model)
    shape = (-1,) + (1,) * model.dims
    x = raw * gain.astype(np.float32).reshape(shape) + offset.astype(np.float32).reshape(shape)
    with torch.no_grad():
        prob = net(torch.from_numpy(np.ascontiguousarray(x[None], dtype=np.float32))).numpy()
    files = _Files(*(folder / n for n in ("weights.pt", "weights_torchscript.pt", "unet.py", "test_input.npy",
                                          "test_output.npy", "cover.png", "README.md")))
    torch.save({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, files.weights)
    with warnings.catch_warnings():  # torch deprecates TorchScript, but Java consumers read only it
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(net), str(files.torchscript))
    shutil.copyfile(unet.__file__, files.architecture)
    np.save(files.test_input, raw[None].astype(np.float32))
    np.save(files.test_output, prob.astype(np.float32))
    cover_image(files.cover, raw, prob[0], model)
    files.readme.write_text(readme_text(model), encoding="utf-8")
    if onnx:
        files = replace(files, onnx=folder / "weights.onnx")
        _write_onnx(net, x[None], files.onnx)
    return files


def _write_onnx(net: UNetProbabilities, example: np.ndarray, path: Path) -> None:
    """ONNX weights with free batch and spatial sizes, checked by onnx's checker.

    The TorchScript-based exporter is used: torch's newer one (``dynamo=True``) took 27 s instead of 3 s
    for a depth-4 network here, and gives the same outputs.
    """
    import onnx

    free = {0: "batch", **{2 + i: a for i, a in enumerate("zyx"[3 - net.dims:])}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(np.ascontiguousarray(example, dtype=np.float32)),), str(path),
                          input_names=["raw"], output_names=["probabilities"], opset_version=ONNX_OPSET,
                          dynamic_axes={"raw": free, "probabilities": free}, dynamo=False)
    onnx.checker.check_model(str(path))
