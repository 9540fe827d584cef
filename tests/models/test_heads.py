"""RetinaNet head against torchvision's with the same weights; the prior-probability bias."""

import torch
from torchvision.models.detection.retinanet import RetinaNetHead as TVRetinaNetHead

from detlab.models.heads.common import prior_bias
from detlab.models.heads.retinanet import RetinaNetHead


def test_equals_torchvision_retinanet_head():
    ours = RetinaNetHead(in_channels=16, num_anchors=9, num_classes=5, width=16, depth=4)
    tv = TVRetinaNetHead(16, 9, 5)
    for i in range(4):
        tv.classification_head.conv[i][0].load_state_dict(ours.cls_tower[2 * i].state_dict())
        tv.regression_head.conv[i][0].load_state_dict(ours.box_tower[2 * i].state_dict())
    tv.classification_head.cls_logits.load_state_dict(ours.cls_out.state_dict())
    tv.regression_head.bbox_reg.load_state_dict(ours.box_out.state_dict())
    levels = [torch.randn(2, 16, 8, 12), torch.randn(2, 16, 4, 6)]
    expected = tv(levels)
    got = ours(levels)
    torch.testing.assert_close(got.cls_logits, expected["cls_logits"])
    torch.testing.assert_close(got.box_reg, expected["bbox_regression"])


def test_prior_probability_init():
    head = RetinaNetHead(in_channels=8, num_anchors=3, num_classes=4, width=8, depth=1, prior_prob=0.01)
    probs = head([torch.zeros(1, 8, 4, 4)]).cls_logits.sigmoid()
    torch.testing.assert_close(probs, torch.full_like(probs, 0.01))
    softmax = prior_bias(4, 0.01, background_first=True).softmax(0)
    torch.testing.assert_close(softmax, torch.tensor([0.99, 0.01 / 3, 0.01 / 3, 0.01 / 3]))
