"""DeltaXYWHBoxCoder against torchvision's BoxCoder, and its round trip."""

import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder

from detlab.models.box_coder import DeltaXYWHBoxCoder


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
