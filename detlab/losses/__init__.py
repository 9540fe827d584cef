"""Interchangeable losses: classification losses (sigmoid: focal, binary CE; softmax: CE, CE with hard negative
mining, softmax focal), box losses (smooth L1, L1, GIoU, and YOLOv3's own terms) and the criteria that combine
one of each over assigned priors (dense heads, YOLO with its objectness, Faster R-CNN's two stages).

A classification loss maps ``cls_logits [B, A, C]`` and ``target_labels [B, A]`` (0..K-1 object, -1
background, -2 ignored: detlab.structures.BACKGROUND, IGNORED) to the sum over the non-ignored priors;
``num_outputs(K)`` says what C it wants (K sigmoid, K + 1 softmax with the background at 0). A box loss maps the
positives' ``box_reg [N, 4]``, ``priors [N, 4]``, ``gt_boxes [N, 4]``, the box coder and the priors' ``strides
[N]`` to a sum over N. The criteria normalise both by the number of positive priors (sampled anchors and RoIs for
Faster R-CNN).
"""
