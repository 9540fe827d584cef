"""Interchangeable losses: classification losses (focal, binary CE; softmax variants later), box losses
(smooth L1, L1, GIoU) and the dense criterion that combines one of each over assigned priors.

A classification loss maps ``cls_logits [B, A, C]`` and ``target_labels [B, A]`` (0..K-1 object, -1
background, -2 ignored) to the sum over the non-ignored priors; ``num_outputs(K)`` says what C it wants.
A box loss maps the positives' ``box_reg [N, 4]``, ``priors [N, 4]``, ``gt_boxes [N, 4]`` and the box coder to
a sum over N. The criterion normalises both by the number of positive priors.
"""
