import numpy as np
import pytest
import torch

from napari_unet.model import UNet, halo_for_depth
from napari_unet.tiling import normalize_tile_size, padded_shape, plan_tiles, read_padded, tiling_cost


def _coverage(shape, tile, halo, align):
    count = np.zeros(shape, int)
    for t in plan_tiles(shape, tile, halo, align):
        count[t.output] += 1
        # the crop is inside the tile and has the output's size
        for c, o, i in zip(t.crop, t.output, t.input):
            assert c.stop - c.start == o.stop - o.start
            assert 0 <= c.start and c.stop <= i.stop - i.start
            assert i.start % align == 0
    return count


@pytest.mark.parametrize("shape", [(1, 1), (17, 300), (256, 256), (257, 513), (1000, 37)])
def test_every_pixel_written_exactly_once(shape):
    count = _coverage(shape, (128, 128), 32, 16)
    assert (count == 1).all()


def test_inner_tiles_keep_halo_of_context():
    shape, halo = (700,), 48
    for t in plan_tiles(shape, (256,), halo, 16):
        (i,), (o,) = t.input, t.output
        if o.start > 0:
            assert o.start - i.start >= halo
        if o.stop < shape[0]:
            assert i.stop - o.stop >= halo


def test_halo_formula_matches_receptive_field():
    # the halo must cover the network's reach: a single changed pixel must not affect outputs beyond it
    net = UNet(2, 1, 2, depth=2, base_channels=4).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()  # positive weights: every path contributes, so the reach is fully visible
        x = torch.zeros(1, 1, 96, 96)
        base = net(x)
        x[0, 0, 48, 48] = 1.0
        changed = (net(x) - base).abs().sum(dim=(0, 1)) > 0
    ys, xs = np.nonzero(changed.numpy())
    reach = max(48 - ys.min(), ys.max() - 48, 48 - xs.min(), xs.max() - 48)
    assert reach <= halo_for_depth(2)
    assert halo_for_depth(4) == 96 and halo_for_depth(2) == 24


def test_tile_size_errors_say_what_to_do():
    with pytest.raises(ValueError, match="positive integer"):
        normalize_tile_size(0, 2, 96, 16)
    with pytest.raises(ValueError, match="at least 208"):
        normalize_tile_size(100, 2, 96, 16)
    with pytest.raises(ValueError, match="3 sizes"):
        normalize_tile_size((256, 256, 256), 2, 96, 16)
    assert normalize_tile_size(300, 2, 96, 16) == (288, 288)
    assert normalize_tile_size(None, 2, 96, 16) is None


def test_read_padded_pads_only_past_the_far_end():
    img = np.arange(5 * 7).reshape(1, 5, 7)
    block = read_padded(img, (slice(0, 16), slice(0, 16)), (5, 7))
    assert block.shape == (1, 16, 16)
    np.testing.assert_array_equal(block[0, :5, :7], img[0])
    assert (block[0, 10, :7] == img[0, 4]).all()  # edge mode
    assert padded_shape((5, 7), 16) == (16, 16)


def test_cost_of_whole_image_plan_is_one():
    tiles = plan_tiles((64, 64), None, 32, 16)
    assert len(tiles) == 1 and tiling_cost(tiles, (64, 64)) == 1.0
