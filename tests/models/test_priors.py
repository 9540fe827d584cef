"""Anchors against torchvision's AnchorGenerator."""

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from detlab.models.priors import AnchorGenerator


def test_anchors_equal_torchvision_up_to_its_rounding():
    sizes, scales, ratios = (32, 64, 128), (1.0, 2 ** (1 / 3), 2 ** (2 / 3)), (0.5, 1.0, 2.0)
    ours = AnchorGenerator(sizes=sizes, scales=scales, aspect_ratios=ratios, offset=0.0)
    tv = TVAnchorGenerator(tuple(tuple(s * x for x in scales) for s in sizes), (ratios,) * len(sizes))
    shapes, strides = [(8, 12), (4, 6), (2, 3)], [8, 16, 32]
    maps = [torch.zeros(1, 1, h, w) for h, w in shapes]
    expected = tv(ImageList(torch.zeros(1, 3, 64, 96), [(64, 96)]), maps)[0]
    priors = ours(shapes, strides, torch.device("cpu"))
    assert ours.num_per_location == 9 and priors.level_sizes == (864, 216, 54)
    # torchvision rounds its zero-centred base anchors to whole pixels; we keep exact sizes.
    torch.testing.assert_close(priors.boxes, expected, atol=0.5, rtol=0)
    assert torch.equal(priors.strides, torch.tensor([8.0] * 864 + [16.0] * 216 + [32.0] * 54))


def test_cell_centre_offset_and_cache():
    gen = AnchorGenerator(sizes=(16,), scales=(1.0,), aspect_ratios=(1.0,), offset=0.5)
    priors = gen([(2, 2)], [8], torch.device("cpu"))
    assert priors.boxes.tolist() == [[-4, -4, 12, 12], [4, -4, 20, 12], [-4, 4, 12, 20], [4, 4, 20, 20]]
    assert gen([(2, 2)], [8], torch.device("cpu")) is priors


def test_wrong_number_of_sizes_names_the_key():
    with pytest.raises(ValueError, match="model.priors.sizes"):
        AnchorGenerator(sizes=(32, 64))([(4, 4)], [8], torch.device("cpu"))
