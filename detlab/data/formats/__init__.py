"""Readers that turn the annotation formats researchers bring into detlab's one internal format, a COCO dict.

Each reader is a function `read_<format>(...) -> ConvertedDataset` (see `common.py`): the complete COCO
instances dict (image ids from 1 in sorted file order, category ids from 1 in class order, bbox xywh in
pixels), the `problems` (what was left out: a degenerate, non-finite or outside box, an unreadable image)
and the `notes` (what was repaired without loss: a clipped box, an EXIF-rotated image). A malformed file
raises a ValueError that names the file, the record and the field; nothing is dropped without a line.

- `voc.py`:     Pascal VOC xml (a folder of xml, or a devkit split), `difficult` as a crowd/ignore region.
- `yolo.py`:    YOLO txt (`class cx cy w h` normalised), class names from data.yaml or a names file.
- `udacity.py`: the Udacity driving CSVs, both published layouts (CrowdAI and Autti).
- `mot.py`:     a MOT challenge sequence, `gt/gt.txt`, frames as images, ignore regions as crowd.
- `source.py`:  FormatSource, which `data=voc|yolo|udacity|mot` use: converts once into the cache, by content.
- `check.py`:   what `detlab-data check` prints: a split's numbers, and the check of every image.

`detlab-data convert` and `detlab-data check` (detlab/cli/data.py) are the command-line side.
"""
