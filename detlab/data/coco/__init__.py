"""COCO annotation files: the reader (a detection Dataset over a file and its image folder) and the checker
that the reader and `detlab-data check` share."""
