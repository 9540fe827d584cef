"""Anchors against torchvision's AnchorGenerator and closed-form sizes, centres and ordering."""

import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from detlab.models.priors import AnchorGenerator

SIZES, SCALES, RATIOS = (32, 64, 128), (1.0, 2 ** (1 / 3), 2 ** (2 / 3)), (0.5, 1.0, 2.0)
SHAPES, STRIDES = [(8, 12), (4, 6), (2, 3)], [8, 16, 32]


def test_anchors_equal_torchvision_after_its_rounding():
    ours = AnchorGenerator(sizes=SIZES, scales=SCALES, aspect_ratios=RATIOS, offset=0.0)
    tv = TVAnchorGenerator(tuple(tuple(s * x for x in SCALES) for s in SIZES), (RATIOS,) * len(SIZES))
    maps = [torch.zeros(1, 1, h, w) for h, w in SHAPES]
    expected = tv(ImageList(torch.zeros(1, 3, 64, 96), [(64, 96)]), maps)[0]
    priors = ours(SHAPES, STRIDES, torch.device("cpu"))
    assert ours.num_per_location == 9 and priors.level_sizes == (8 * 12 * 9, 4 * 6 * 9, 2 * 3 * 9)
    # torchvision rounds its zero-centred base anchors to whole pixels (e.g. 45.25 wide -> 45); we keep the exact
    # sizes. With offset 0 the centres are whole multiples of the stride, so rounding our boxes gives its own.
    assert torch.equal(priors.boxes.round(), expected)
    assert not torch.equal(priors.boxes, expected)  # we really keep the unrounded sizes
    assert torch.equal(priors.strides, torch.tensor([8.0] * 864 + [16.0] * 216 + [32.0] * 54))


def test_exact_areas_and_aspect_ratios():
    priors = AnchorGenerator(sizes=(32,), scales=SCALES, aspect_ratios=RATIOS)([(1, 1)], [8], "cpu")
    w = priors.boxes[:, 2] - priors.boxes[:, 0]
    h = priors.boxes[:, 3] - priors.boxes[:, 1]
    # ratio-major, then scale: (0.5, s0), (0.5, s1), (0.5, s2), (1.0, s0), ...
    expected_area = torch.tensor([(32 * s) ** 2 for _ in RATIOS for s in SCALES])
    expected_ratio = torch.tensor([r for r in RATIOS for _ in SCALES])
    torch.testing.assert_close(w * h, expected_area)
    torch.testing.assert_close(h / w, expected_ratio)
    torch.testing.assert_close((priors.boxes[:, :2] + priors.boxes[:, 2:]) / 2, torch.zeros(9, 2))


def test_cell_centre_offset_ordering_and_cache():
    gen = AnchorGenerator(sizes=(16,), scales=(1.0,), aspect_ratios=(1.0,), offset=0.5)
    priors = gen([(2, 3)], [8], torch.device("cpu"))
    # y-major, then x: centres (4, 4), (12, 4), (20, 4), (4, 12), ...
    centres = [(4 + 8 * x, 4 + 8 * y) for y in range(2) for x in range(3)]
    assert priors.boxes.tolist() == [[cx - 8, cy - 8, cx + 8, cy + 8] for cx, cy in centres]
    assert priors.boxes.dtype == torch.float32 and priors.level_sizes == (6,)
    assert gen([(2, 3)], [8], "cpu") is priors
    assert gen([(3, 2)], [8], "cpu") is not priors


def test_non_square_levels_count():
    gen = AnchorGenerator(sizes=(32, 64), scales=(1.0, 2.0), aspect_ratios=(1.0,))
    priors = gen([(17, 25), (9, 13)], [8, 16], "cpu")
    assert len(priors) == 2 * (17 * 25 + 9 * 13) and priors.level_sizes == (2 * 17 * 25, 2 * 9 * 13)
    assert priors.boxes[-1].tolist() == [12 * 16 - 64, 8 * 16 - 64, 12 * 16 + 64, 8 * 16 + 64]
    assert math.isclose(priors.boxes[:, 2:].max().item(), 12 * 16 + 64)


def test_wrong_number_of_sizes_names_the_key():
    with pytest.raises(ValueError, match="model.priors.sizes"):
        AnchorGenerator(sizes=(32, 64))([(4, 4)], [8], torch.device("cpu"))
    with pytest.raises(ValueError, match="model.priors.sizes"):
        AnchorGenerator(sizes=(32,))([(4, 4)], [8, 16], torch.device("cpu"))
    with pytest.raises(ValueError, match="model.priors.aspect_ratios"):
        AnchorGenerator(aspect_ratios=(0.0, 1.0))


@pytest.mark.parametrize("image_shape", [(800, 1216), (384, 512), (96, 160)])
def test_torchvision_rule_gives_torchvision_retinanet_anchors_exactly(image_shape):
    """round=True, stride="input" and torchvision's truncated per-level sizes are its RetinaNet's anchors, bit for
    bit, also where the input side is not a multiple of a level's stride (P6, P7 at 800 x 1216)."""
    tv_sizes = tuple((x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))) for x in (32, 64, 128, 256, 512))
    tv = TVAnchorGenerator(tv_sizes, (RATIOS,) * 5)
    ours = AnchorGenerator(sizes=tv_sizes, scales=(1.0,), aspect_ratios=RATIOS, round=True, stride="input")
    h, w = image_shape
    shapes = [(math.ceil(h / s), math.ceil(w / s)) for s in (8, 16, 32, 64, 128)]  # ResNet's ceil halving
    expected = tv(ImageList(torch.zeros(1, 3, h, w), [image_shape]), [torch.zeros(1, 1, *s) for s in shapes])[0]
    priors = ours(shapes, [8, 16, 32, 64, 128], "cpu", image_shape)
    assert torch.equal(priors.boxes, expected)
    # the nominal strides place the same anchors elsewhere wherever h // H_l differs from the stride
    nominal = AnchorGenerator(sizes=tv_sizes, scales=(1.0,), aspect_ratios=RATIOS, round=True)(
        shapes, [8, 16, 32, 64, 128], "cpu"
    )
    differs = any(h // sh != s or w // sw != s for (sh, sw), s in zip(shapes, (8, 16, 32, 64, 128)))
    assert torch.equal(nominal.boxes, expected) != differs


def test_per_level_size_lists_and_bad_rules_are_named():
    gen = AnchorGenerator(sizes=[[16, 20], [32, 40]], scales=(1.0,), aspect_ratios=(1.0,))
    assert gen.num_per_location == 2
    sides = gen([(1, 1), (1, 1)], [8, 16], "cpu").boxes[:, 2] * 2
    assert sides.tolist() == [16, 20, 32, 40]
    with pytest.raises(ValueError, match="model.priors.stride='pixel'"):
        AnchorGenerator(stride="pixel")
    with pytest.raises(ValueError, match="same number of sizes"):
        AnchorGenerator(sizes=[[16, 20], [32]])
    with pytest.raises(ValueError, match="image_shape"):
        AnchorGenerator(sizes=(16,), stride="input")([(2, 2)], [8], "cpu")
