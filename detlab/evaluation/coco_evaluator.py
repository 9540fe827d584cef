"""COCO box evaluation against the dataset's own annotation file, in original image ids and pixels.

`CocoEvaluator` accumulates each validation step's detections as compact arrays of COCO results, gathers
them across DDP ranks once in `compute()`, and scores them with COCOeval. The rules it follows:

- Only the images that were actually seen are scored (``params.imgIds`` is set to them). A partial val set
  (``limit_val_batches``, a sanity check) is therefore scored honestly on its own images: the objects of
  images never run are not counted as misses. `evaluate_results_file` has no record of which images were
  run, so it scores every image of the annotation file, as the official COCO protocol does.
- A DistributedSampler pads the last batches by repeating images; an image id seen more than once (on any
  ranks, or twice on one) keeps the detections of its first copy only (rank order, then update order).
- Only the evaluator's categories are scored (``params.catIds = category_ids``), so a model trained on a
  subset of the file's classes is not charged for the others. A label space may also be wider than the file
  (torchvision's 91-way COCO labels keep places for ids COCO never used): labels whose category the file does
  not have cannot match anything, are not scored and have no per-class AP.
- Per-class AP is the mean of COCO's precision array at IoU 0.50:0.95, area all, maxDets 100. Classes with
  no ground truth in the scored images have no AP (COCO marks them -1) and are left out of ``per_class_AP``,
  so the dict holds only real numbers (it is written to JSON and W&B tables); the mean of its values is AP.
- Summary numbers follow COCOeval exactly, including its -1 for a number with no ground truth at all (e.g.
  APs when no object is small). No detections at all is a valid outcome: COCOeval gives 0 for every number
  that has ground truth (and -1 where it has none); we run COCOeval on the empty result list rather than
  special-casing it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from detlab.distributed import from_every_rank
from detlab.errors import ConfigError
from detlab.evaluation.backends import DEFAULT_BACKEND, BoxResults, categories, check_backend, load_ground_truth
from detlab.evaluation.coco_table import score
from detlab.structures import Detections


class CocoEvaluator:
    """Accumulates per-image detections and computes the COCO table plus per-class AP.

    ann_file:     the COCO annotation file the images come from (original image ids and pixels).
    category_ids: label -> the file's category id (label k is category_ids[k]).
    class_names:  label -> name for ``per_class_AP``; the file's category names when None.
    backend:      "hotcoco" (default), "faster_coco_eval" or "pycocotools" (the reference they equal).
    """

    def __init__(
        self,
        ann_file: str,
        category_ids: Sequence[int],
        class_names: Sequence[str] | None = None,
        backend: str = DEFAULT_BACKEND,
    ) -> None:
        check_backend(backend)
        self.ann_file = str(ann_file)
        self.backend = backend
        self._gt = load_ground_truth(self.ann_file, backend)
        self.category_ids = [int(c) for c in category_ids]
        self.class_names = _class_names(self._gt, self.ann_file, self.category_ids, class_names)
        self._category_of_label = np.asarray(self.category_ids, dtype=np.int64)
        self._file_image_ids = np.unique(np.asarray(self._gt.getImgIds(), dtype=np.int64))
        self.reset()

    def __getstate__(self) -> dict[str, Any]:
        # hotcoco's COCO (a Rust object) can be neither pickled nor deep-copied, and Lightning's weight averaging
        # (ema.decay) deep-copies the whole module: a copy reads the annotation file again instead.
        return {k: v for k, v in self.__dict__.items() if k != "_gt"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._gt = load_ground_truth(self.ann_file, self.backend)

    def reset(self) -> None:
        """Forget everything accumulated (call at the start of each validation epoch)."""
        self._seen: list[np.ndarray] = []  # image ids of each update, [B] each
        self._results: list[BoxResults] = []
        self._owner: list[np.ndarray] = []  # per detection, its image's index among all seen images
        self._num_seen = 0

    @torch.no_grad()
    def update(self, detections: list[Detections], image_ids: Tensor) -> None:
        """Add one batch: detections per image (boxes [N, 4] xyxy in original pixels) and image_ids [B]."""
        ids = image_ids.detach().cpu().numpy().astype(np.int64).reshape(-1)
        if len(detections) != len(ids):
            raise ValueError(f"update() got {len(detections)} Detections for {len(ids)} image ids")
        unknown = ids[~np.isin(ids, self._file_image_ids)]
        if unknown.size:
            raise ValueError(f"image ids {unknown[:5].tolist()} are not images of {self.ann_file}")
        if len(ids) == 0:
            return
        # The input is a list of per-image tensors: one cat over it is the only per-image work.
        counts = [len(d.scores) for d in detections]
        boxes_xyxy = torch.cat([d.boxes for d in detections]).float().cpu().numpy().astype(np.float64)
        scores = torch.cat([d.scores for d in detections]).float().cpu().numpy().astype(np.float64)
        labels = torch.cat([d.labels for d in detections]).cpu().numpy().astype(np.int64)
        image_of_det = np.repeat(np.arange(len(ids)), counts)  # [N] index into this batch
        bad = (labels < 0) | (labels >= len(self.category_ids))
        if bad.any():
            bad_images = np.unique(ids[image_of_det[bad]])[:5].tolist()
            raise ValueError(
                f"labels {np.unique(labels[bad])[:5].tolist()} (images {bad_images}) are outside "
                f"0..{len(self.category_ids) - 1}, the classes of this evaluator"
            )
        bbox_xywh = np.concatenate([boxes_xyxy[:, :2], boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]], axis=1)
        self._results.append(BoxResults(ids[image_of_det], self._category_of_label[labels], bbox_xywh, scores))
        self._owner.append(image_of_det + self._num_seen)
        self._seen.append(ids)
        self._num_seen += len(ids)

    def compute(self) -> dict[str, Any]:
        """Gather all ranks' results once, drop DDP padding duplicates, and score the images seen.

        Returns {"metrics": {name: float for name in METRIC_NAMES}, "per_class_AP": {class_name: float},
        "scored": {"images": int, "detections": int}, ...} (coco_table.score), the same dict on every rank.
        """
        seen, results = _gather_and_deduplicate(self._local_state())
        if seen.size == 0:
            raise RuntimeError("CocoEvaluator.compute() before any update(): there are no images to score")
        names = {c: n for c, n in zip(self.category_ids, self.class_names) if c in categories(self._gt)}
        # labels of a wider label space whose category the file lacks cannot match anything: not scored
        results = results.select(np.isin(results.category_ids, list(names)))
        return score(self._gt, results, seen, names, self.backend)

    def _local_state(self) -> tuple[np.ndarray, BoxResults, np.ndarray]:
        """This rank's seen image ids [I], results [N] and each result's index into the seen ids [N]."""
        seen = np.concatenate(self._seen) if self._seen else np.zeros(0, dtype=np.int64)
        owner = np.concatenate(self._owner) if self._owner else np.zeros(0, dtype=np.int64)
        return seen, BoxResults.concat(self._results), owner


def _gather_and_deduplicate(local: tuple[np.ndarray, BoxResults, np.ndarray]) -> tuple[np.ndarray, BoxResults]:
    """All ranks' seen image ids (unique, sorted) [I] and results with one copy per image [N]."""
    states = from_every_rank(local)
    offsets = np.cumsum([0] + [len(seen) for seen, _, _ in states])
    seen = np.concatenate([s for s, _, _ in states])
    owner = np.concatenate([o + offset for (_, _, o), offset in zip(states, offsets)])
    results = BoxResults.concat([r for _, r, _ in states])
    unique_ids, first_copy = np.unique(seen, return_index=True)
    is_first_copy = np.zeros(len(seen), dtype=bool)
    is_first_copy[first_copy] = True
    return unique_ids, results.select(is_first_copy[owner])


def _class_names(coco_gt: Any, ann_file: str, category_ids: list[int], class_names: Sequence[str] | None) -> list[str]:
    file_names = categories(coco_gt)
    if not set(category_ids) & set(file_names):
        raise ConfigError(f"category ids {category_ids} are not categories of {ann_file} (it has {sorted(file_names)})")
    if len(set(category_ids)) != len(category_ids):
        raise ConfigError(f"category_ids {category_ids} repeat an id")
    names = [file_names.get(c, f"unused_{c}") for c in category_ids] if class_names is None else [
        str(n) for n in class_names
    ]
    if len(names) != len(category_ids):
        raise ValueError(f"{len(names)} class_names for {len(category_ids)} category_ids")
    if len(set(names)) != len(names):
        raise ValueError(f"class names {names} repeat a name; per-class AP is keyed by name")
    return names
