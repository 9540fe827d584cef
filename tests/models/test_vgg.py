"""SSD's VGG16 against torchvision's SSDFeatureExtractorVGG; weights by name from a local cache (no network)."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.detection.ssd import SSDFeatureExtractorVGG, _vgg_extractor
from torchvision.models.vgg import cfgs, make_layers

from detlab.models.backbones.vgg import VGG16


def torchvision_extractor_with_our_weights(net: VGG16) -> SSDFeatureExtractorVGG:
    """torchvision's SSD300 feature extractor (conv4_3 L2-normalised, then fc7), holding net's weights."""
    tv = SSDFeatureExtractorVGG(make_layers(cfgs["D"]), highres=False)
    tv.features.load_state_dict({k: v for k, v in net.features.state_dict().items() if int(k.split(".")[0]) < 23})
    conv5 = {k: v for k, v in net.features.state_dict().items() if int(k.split(".")[0]) >= 23}
    tv.extra[0].load_state_dict(
        {f"{int(k.split('.')[0]) - 23}.{k.split('.')[1]}": v for k, v in conv5.items()}
        | {f"7.1.{k}": v for k, v in net.fc6.state_dict().items()}
        | {f"7.3.{k}": v for k, v in net.fc7.state_dict().items()}
    )
    with torch.no_grad():
        tv.scale_weight.copy_(net.l2norm.weight)
    return tv


def test_equals_torchvision_ssd_feature_extractor():
    torch.manual_seed(0)
    net = VGG16().eval()
    with torch.no_grad():
        net.l2norm.weight.uniform_(10, 30)  # not the init: a wrong per-channel scale must show
    tv = torchvision_extractor_with_our_weights(net).eval()
    images = torch.randn(2, 3, 75, 90)  # odd sizes: pool3's ceil_mode matters
    with torch.no_grad():
        conv4_3, fc7 = net(images)
        # torchvision's forward up to its first two outputs (its extra layers need a 300 px input)
        x = tv.features(images)
        expected_conv4_3 = tv.scale_weight.view(1, -1, 1, 1) * F.normalize(x)
        expected_fc7 = tv.extra[0](x)
    torch.testing.assert_close(conv4_3, expected_conv4_3)
    torch.testing.assert_close(fc7, expected_fc7)
    # L2 normalisation: every location's channel vector has the norm of the scale (20 at init).
    fresh = VGG16(out_indices=(2,)).eval()
    with torch.no_grad():
        (normed,) = fresh(images)
    torch.testing.assert_close(normed.norm(dim=1), torch.full(normed[:, 0].shape, 20.0))


@pytest.mark.parametrize("size, shapes", [(300, [(38, 38), (19, 19)]), (512, [(64, 64), (32, 32)])])
def test_paper_map_sizes_channels_and_strides(size, shapes):
    # Shapes only: the meta device runs no arithmetic, so a full-size input costs nothing.
    net = VGG16().to("meta")
    tv = SSDFeatureExtractorVGG(make_layers(cfgs["D"]), highres=False).to("meta")
    images = torch.zeros(1, 3, size, size, device="meta")
    features = net(images)
    reference = tv(images)
    assert [tuple(f.shape[-2:]) for f in features] == shapes
    assert [tuple(f.shape) for f in features] == [tuple(reference[k].shape) for k in ("0", "1")]
    assert net.out_channels == (512, 1024) and net.strides == (8, 16)
    assert VGG16(out_indices=(3,)).out_channels == (1024,)


def _random_vgg16_state() -> dict:
    """A random vgg16 state dict, to be saved where torchvision's loader looks before downloading.

    The classifier's fc6/fc7 (120 M numbers) are stored as stride-0 expansions of one row or column, so the file
    stays small; each row (fc6) or column (fc7) differs, so the decimation indices are still checked.
    """
    state = {f"features.{k}": v for k, v in VGG16().features.state_dict().items()}
    for key in ("features.0.weight", "features.28.bias"):  # off the init, so that a skipped layer shows
        state[key] = torch.randn_like(state[key])
    state["classifier.0.bias"], state["classifier.3.bias"] = torch.randn(4096), torch.randn(4096)
    state["classifier.6.weight"], state["classifier.6.bias"] = torch.zeros(1000, 4096), torch.zeros(1000)
    state["classifier.0.weight"] = torch.randn(25088)[None].expand(4096, 25088)
    state["classifier.3.weight"] = torch.randn(4096)[:, None].expand(4096, 4096)
    return state


@pytest.mark.parametrize("pretrained", [True, "IMAGENET1K_V1"])
def test_pretrained_weights_load_by_name_and_fc_layers_are_decimated(torch_cache, pretrained):
    expected = _random_vgg16_state()
    torch_cache(expected, torchvision.models.VGG16_Weights.IMAGENET1K_V1)
    net = VGG16(pretrained=pretrained)
    for key, value in net.features.state_dict().items():
        assert torch.equal(value, expected[f"features.{key}"]), key
    # The paper's fc reduction: 4096 -> 1024 units (every 4th), fc6's 7x7 taps -> 3x3 (rows/cols 0, 3, 6).
    fc6 = expected["classifier.0.weight"].reshape(4096, 512, 7, 7)
    fc7 = expected["classifier.3.weight"]
    taps = torch.tensor([0, 3, 6])
    assert torch.equal(net.fc6.weight, fc6[torch.arange(0, 4096, 4)][:, :, taps][:, :, :, taps])
    assert torch.equal(net.fc6.bias, expected["classifier.0.bias"][torch.arange(0, 4096, 4)])
    assert torch.equal(net.fc7.weight[:, :, 0, 0], fc7[torch.arange(0, 4096, 4)][:, torch.arange(0, 4096, 4)])
    assert torch.equal(net.fc7.bias, expected["classifier.3.bias"][torch.arange(0, 4096, 4)])
    assert net.fc6.dilation == (6, 6) and torch.equal(net.l2norm.weight, torch.full((512,), 20.0))


def test_bad_settings_name_the_key():
    with pytest.raises(ValueError, match="model.backbone.out_indices"):
        VGG16(out_indices=(2, 4))
    with pytest.raises(ValueError, match="model.backbone.pretrained"):
        VGG16(pretrained="IMAGENET1K_V9")
    # caffe-preprocessed weights would silently see wrongly normalised images
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        VGG16(pretrained="IMAGENET1K_FEATURES")


@pytest.mark.parametrize("trainable_layers", [5, 4, 1])
def test_frozen_stages_are_torchvisions_trainable_backbone_layers(trainable_layers):
    # torchvision's ssd300_vgg16 freezes its VGG's first 5 - trainable_layers blocks (it reads only .features)
    tv = _vgg_extractor(SimpleNamespace(features=make_layers(cfgs["D"])), False, trainable_layers)
    # torchvision's extra.0.j is VGG's features.(23 + j): the names of the frozen parameters in our numbering
    frozen_tv = {
        name if name.startswith("features.") else f"features.{23 + int(name.split('.')[2])}.{name.split('.')[3]}"
        for name, p in tv.named_parameters() if not p.requires_grad
    }
    net = VGG16(frozen_stages=5 - trainable_layers).train()
    assert {name for name, p in net.named_parameters() if not p.requires_grad} == frozen_tv
    assert len(frozen_tv) == {5: 0, 4: 4, 1: 20}[trainable_layers]  # conv1_x: 2 convs; conv1_x .. conv4_x: 10
    with pytest.raises(ValueError, match="model.backbone.frozen_stages"):
        VGG16(frozen_stages=6)
