"""DeltaXYWHBoxCoder against torchvision's BoxCoder, and its round trip; YoloBoxCoder against darknet's formula."""

import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder

from detlab.models.box_coder import DeltaXYWHBoxCoder, YoloBoxCoder
from tests.models.conftest import NUM_PRIORS, darknet_decode, prior_cells, tiny_priors


def random_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * 300
    wh = torch.rand(n, 2, generator=generator) * 200 + 2
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_decode_match_torchvision(weights):
    g = torch.Generator().manual_seed(0)
    gt, priors = random_boxes(500, g), random_boxes(500, g)
    ours, reference = DeltaXYWHBoxCoder(weights), BoxCoder(weights)
    torch.testing.assert_close(ours.encode(gt, priors), reference.encode_single(gt, priors))
    deltas = torch.randn(500, 4, generator=g) * 2
    torch.testing.assert_close(ours.decode(deltas, priors), reference.decode_single(deltas, priors))


def test_decode_clamps_the_size_delta_as_torchvision():
    priors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    deltas = torch.tensor([[0.0, 0.0, 50.0, 50.0]])  # exp(50) would be 5e21 without the clamp
    decoded = DeltaXYWHBoxCoder().decode(deltas, priors)
    torch.testing.assert_close(decoded, BoxCoder((1.0, 1.0, 1.0, 1.0)).decode_single(deltas, priors))
    torch.testing.assert_close(decoded[0, 2] - decoded[0, 0], torch.tensor(10 * 1000 / 16))


def test_round_trip_and_broadcast_over_leading_dims():
    g = torch.Generator().manual_seed(1)
    priors = random_boxes(50, g)  # [A, 4]
    gt = random_boxes(3 * 50, g).reshape(3, 50, 4)  # [B, A, 4]
    coder = DeltaXYWHBoxCoder((10.0, 10.0, 5.0, 5.0))
    deltas = coder.encode(gt, priors)
    assert deltas.shape == (3, 50, 4)
    torch.testing.assert_close(coder.decode(deltas, priors), gt, rtol=1e-5, atol=1e-3)
    # Broadcasting gives the same numbers as explicitly repeated priors.
    torch.testing.assert_close(deltas, coder.encode(gt, priors.expand(3, -1, -1)))


def test_float32_under_half_inputs():
    priors = torch.tensor([[0.0, 0.0, 10.0, 10.0]], dtype=torch.float16)
    deltas = torch.zeros(1, 4, dtype=torch.bfloat16)
    assert DeltaXYWHBoxCoder().decode(deltas, priors).dtype == torch.float32
    assert DeltaXYWHBoxCoder().encode(priors, priors).dtype == torch.float32


def test_bad_weights_name_the_key():
    with pytest.raises(ValueError, match="box_coder.weights"):
        DeltaXYWHBoxCoder((1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="box_coder.clamp"):
        DeltaXYWHBoxCoder(clamp=-math.inf)


# --- YOLOv3's coder on a tiny grid (tests.models.conftest) ------------------------------------------------


def test_decode_is_darknets_formula_and_encode_inverts_it():
    priors = tiny_priors()
    box_reg = torch.randn(2, NUM_PRIORS, 4, generator=torch.Generator().manual_seed(0))
    coder = YoloBoxCoder()
    decoded = coder.decode(box_reg, priors.boxes, priors.strides)
    for a, cell in enumerate(prior_cells()):
        torch.testing.assert_close(decoded[1, a], darknet_decode(box_reg[1, a], *cell))
    torch.testing.assert_close(coder.encode(decoded, priors.boxes, priors.strides), box_reg, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="needs each prior's stride"):
        coder.decode(box_reg, priors.boxes)


def test_encode_a_centre_on_the_cell_edge_is_finite():
    priors = tiny_priors()
    gt = priors.boxes[:1] - torch.tensor([4.0, 0.0, 4.0, 0.0])  # centre on the cell's left edge
    target = YoloBoxCoder(eps=1e-3).encode(gt, priors.boxes[:1], priors.strides[:1])
    torch.testing.assert_close(target[0, 0], torch.logit(torch.tensor(1e-3)))
