"""Readers that turn the annotation formats researchers bring into detlab's one internal format, a COCO dict.

Each reader is a function `read_<format>(...) -> ConvertedDataset` (see `common.py`): the complete COCO
instances dict (image ids from 1 in sorted file order, category ids from 1 in class order, bbox xywh in
pixels) and the list of recoverable problems found on the way. A malformed file raises a ValueError that
names the file, the record and the field; a recoverable problem (a degenerate, non-finite or outside box, an
unreadable image) is listed in `problems`, and nothing is dropped without such a line.

- `voc.py`:     Pascal VOC xml (a folder of xml, or a devkit split), `difficult` kept as `ignore: 1`.
- `yolo.py`:    YOLO txt (`class cx cy w h` normalised), class names from data.yaml or a names file.
- `udacity.py`: the Udacity driving CSVs, both published layouts (CrowdAI and Autti).
- `mot.py`:     a MOT challenge sequence, `gt/gt.txt`, frames as images, ignore regions as crowd.

`detlab-data convert` (detlab/datacli.py) writes any of them out as a COCO json.
"""
