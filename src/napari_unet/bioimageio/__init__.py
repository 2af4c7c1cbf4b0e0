"""bioimage.io model packages: export a napari-unet model as one, and load the packages napari-unet made.

Exporting needs the ``bioimageio`` extra (``pip install "napari-unet[bioimageio]"``: bioimageio.spec
builds and checks the description); loading a napari-unet package needs nothing beyond napari-unet, since
the package carries our own configuration and weights and only those are read (`load_package`).
"""
from ._read import CONFIG_KEY, PACKAGE_FORMAT_VERSION, PACKAGE_SUFFIX, load_package, read_rdf
from ._export import EXTRA_HINT, check_package_output, export_package

__all__ = ["export_package", "load_package", "read_rdf", "check_package_output", "CONFIG_KEY",
           "PACKAGE_FORMAT_VERSION", "PACKAGE_SUFFIX", "EXTRA_HINT"]
