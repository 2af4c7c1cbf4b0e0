"""The package's description (rdf), built with bioimageio.spec's 0.5 classes, which check every field."""
from __future__ import annotations

import getpass
import re

import numpy as np
import torch

from .. import __version__
from ..model import Model, network_kwargs
from ..modelfile import MAGIC
from ._describe import declared_halo, default_description, default_name, identifier, valid_sizes
from ._read import CONFIG_KEY, PACKAGE_FORMAT_VERSION

__all__ = ["describe", "check_options", "scale_linear", "DEFAULT_LICENSE", "DEFAULT_CITE", "ONNX_OPSET"]

#: Opset of the ONNX weights (every operator of the UNet has had it for years).
ONNX_OPSET = 17
DEFAULT_LICENSE = "CC-BY-4.0"
DEFAULT_CITE = (("Ronneberger, Fischer, Brox. U-Net: Convolutional Networks for Biomedical Image Segmentation. "
                 "MICCAI 2015", "10.1007/978-3-319-24574-4_28"),)

_SPACE = {2: ("y", "x"), 3: ("z", "y", "x")}


def describe(v0_5, model: Model, files, *, name=None, description=None, authors=None, license=None, cite=None):
    """The `ModelDescr` of a package whose files are ``files`` (`_export._Files`); ValueError if invalid."""
    from pydantic import ValidationError

    try:
        return v0_5.ModelDescr(
            name=name or default_name(model),
            description=description or default_description(model),
            authors=[v0_5.Author(name=a) for a in (authors or [_login()])],
            cite=[_cite(v0_5, text, link) for text, link in (cite or DEFAULT_CITE)],
            license=_license(v0_5, license or DEFAULT_LICENSE),
            documentation=v0_5.FileDescr(source=files.readme),
            covers=[v0_5.FileDescr(source=files.cover)],
            tags=["napari-unet", "unet", "segmentation", f"{model.dims}d", "pytorch", model.mode],
            inputs=[_input(v0_5, model, files, scale_linear(model))],
            outputs=[_output(v0_5, model, files)],
            weights=_weights(v0_5, model, files),
            config=v0_5.Config(**{
                "bioimageio": v0_5.BioimageioConfig(architecture_type=f"{model.dims}D UNet"),
                CONFIG_KEY: {"format": MAGIC, "format_version": PACKAGE_FORMAT_VERSION, "version": __version__,
                             "model": model.config.to_dict(), "history": model.history},
            }),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ValueError(f"the package description is not valid: {where}: {str(first.get('msg'))[:200]}") from None


def _license(v0_5, text: str):
    from pydantic import ValidationError

    try:
        return v0_5.LicenseId(text)
    except ValidationError:
        raise ValueError(f"unknown license {text!r}: give an SPDX license id such as CC-BY-4.0, MIT or BSD-3-Clause "
                         "(https://spdx.org/licenses)") from None


def scale_linear(model: Model) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (gain, offset) with ``x * gain + offset == Model.preprocess(x)`` (`napari_unet.model.normalize`)."""
    low = np.asarray(model.config.norm_low, dtype=np.float64)
    high = np.asarray(model.config.norm_high, dtype=np.float64)
    gain = 1.0 / np.maximum(high - low, 1e-6)
    return gain, -low * gain


def check_options(v0_5, *, name=None, license=None, cite=None) -> None:
    """Refuse a bad name, license or citation before any work is done for the package (ValueError)."""
    if name is not None and not re.fullmatch(r"[A-Za-z0-9_+\- ()]{5,128}", name):
        raise ValueError(f"the name {name!r} is not valid: 5 to 128 letters, digits, spaces or _+-() (the zoo's rule)")
    if license is not None:
        _license(v0_5, license)
    for text, link in cite or ():
        _cite(v0_5, text, link)


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (containers): still a package, with a neutral author
        return "napari-unet user"


def _cite(v0_5, text: str, link: str):
    link = str(link).strip()
    doi = link[len("https://doi.org/"):] if link.startswith("https://doi.org/") else link
    doi = doi[4:] if doi.lower().startswith("doi:") else doi
    if doi.startswith("10."):
        return v0_5.CiteEntry(text=text, doi=v0_5.Doi(doi))
    if link.startswith(("http://", "https://")):
        return v0_5.CiteEntry(text=text, url=v0_5.HttpUrl(link))
    raise ValueError(f"a citation needs a DOI (10.xxxx/...) or an http(s) URL, got {link!r}")


def _input(v0_5, model: Model, files, scaling):
    low, step = valid_sizes(model)
    c = model.config
    axes = [v0_5.BatchAxis(),
            v0_5.ChannelAxis(channel_names=[v0_5.Identifier(f"channel{i}") for i in range(c.in_channels)])]
    axes += [v0_5.SpaceInputAxis(id=v0_5.AxisId(a), size=v0_5.ParameterizedSize(min=low, step=step))
             for a in _SPACE[c.dims]]
    gain, offset = scaling
    pre = []
    if not (np.all(gain == 1.0) and np.all(offset == 0.0)):  # the spec refuses a scaling that does nothing
        kwargs = (v0_5.ScaleLinearKwargs(gain=float(gain[0]), offset=float(offset[0])) if c.in_channels == 1 else
                  v0_5.ScaleLinearAlongAxisKwargs(axis=v0_5.AxisId("channel"), gain=gain.tolist(),
                                                  offset=offset.tolist()))
        pre.append(v0_5.ScaleLinearDescr(kwargs=kwargs))
    return v0_5.InputTensorDescr(
        id=v0_5.TensorId("raw"), description="raw intensities (any dtype; normalized by the preprocessing)",
        axes=axes, test_tensor=v0_5.FileDescr(source=files.test_input),
        data=v0_5.IntervalOrRatioDataDescr(type="float32"), preprocessing=pre)


def _output(v0_5, model: Model, files):
    c = model.config
    halo = declared_halo(model)
    axes = [v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=identifier(c.class_names))]
    axes += [v0_5.SpaceOutputAxisWithHalo(id=v0_5.AxisId(a), halo=halo,
                                          size=v0_5.SizeReference(tensor_id=v0_5.TensorId("raw"),
                                                                  axis_id=v0_5.AxisId(a)))
             for a in _SPACE[c.dims]]
    return v0_5.OutputTensorDescr(
        id=v0_5.TensorId("probabilities"), description=f"class probabilities: {', '.join(c.class_names)}"[:128],
        axes=axes, test_tensor=v0_5.FileDescr(source=files.test_output),
        data=v0_5.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)))


def _weights(v0_5, model: Model, files):
    c = model.config
    version = v0_5.Version(torch.__version__.split("+")[0])
    arch = v0_5.ArchitectureFromFileDescr(
        source=files.architecture, callable=v0_5.Identifier("UNetProbabilities"),
        kwargs=network_kwargs(c))
    onnx = (None if files.onnx is None else
            v0_5.OnnxWeightsDescr(source=files.onnx, opset_version=ONNX_OPSET, parent="pytorch_state_dict"))
    return v0_5.WeightsDescr(
        pytorch_state_dict=v0_5.PytorchStateDictWeightsDescr(source=files.weights, architecture=arch,
                                                             pytorch_version=version),
        torchscript=v0_5.TorchscriptWeightsDescr(source=files.torchscript, pytorch_version=version,
                                                 parent="pytorch_state_dict"),
        onnx=onnx)
