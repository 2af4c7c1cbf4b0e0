import numpy as np
import pytest


@pytest.fixture
def blobs():
    """A small 2D image of bright discs on a dim background with sparse strokes (1 = bg, 2 = disc)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :128]
    truth = np.zeros((96, 128), np.int32)
    centers = [(20, 20), (25, 70), (60, 40), (70, 100), (40, 105), (75, 15)]
    for i, (cy, cx) in enumerate(centers, 1):
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = i
    image = (100 + 400 * (truth > 0) + rng.normal(0, 20, truth.shape)).astype(np.uint16)
    strokes = np.zeros_like(truth, dtype=np.uint8)
    strokes[truth == 1] = 2
    strokes[truth == 3] = 2
    strokes[88:92, 30:90] = 1
    strokes[5:9, 40:60] = 1
    return image, strokes, truth
