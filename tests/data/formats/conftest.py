"""Fixtures shared by the format reader tests: a box-for-box comparison of COCO dicts (tiny image files:
tests/conftest.py's make_image)."""

from __future__ import annotations

from typing import Any, Callable

import pytest


def _sizes(coco: dict[str, Any]) -> dict[str, tuple[int, int]]:
    return {img["file_name"]: (img["width"], img["height"]) for img in coco["images"]}


def _by_file(coco: dict[str, Any]) -> dict[str, list[tuple]]:
    """file_name -> sorted [(class name, bbox rounded, iscrowd, ignore)]: what a human compares."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {img["id"]: img["file_name"] for img in coco["images"]}
    out: dict[str, list[tuple]] = {name: [] for name in files.values()}
    for ann in coco["annotations"]:
        box = tuple(round(v, 4) for v in ann["bbox"])
        out[files[ann["image_id"]]].append((names[ann["category_id"]], box, ann["iscrowd"], ann.get("ignore")))
    return {name: sorted(boxes) for name, boxes in out.items()}


@pytest.fixture
def assert_same_coco() -> Callable[[dict, dict], None]:
    """assert_same_coco(actual, expected): same images (name, size), same boxes and classes box for box,
    areas equal to w * h, and ids counted from 1."""

    def check(actual: dict, expected: dict) -> None:
        assert _sizes(actual) == _sizes(expected)
        assert _by_file(actual) == _by_file(expected)
        assert [c["name"] for c in actual["categories"]] == [c["name"] for c in expected["categories"]]
        assert [c["id"] for c in actual["categories"]] == list(range(1, len(actual["categories"]) + 1))
        assert [a["id"] for a in actual["annotations"]] == list(range(1, len(actual["annotations"]) + 1))
        for ann in actual["annotations"]:
            assert ann["area"] == pytest.approx(ann["bbox"][2] * ann["bbox"][3])

    return check
