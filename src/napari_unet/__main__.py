"""``python -m napari_unet`` is the ``napari-unet`` command (what ``torchrun ... -m napari_unet`` launches)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
