"""Data: the built-in shapes generator, the COCO reader, transforms, collate and the DataModule."""
