"""`make bench` runs end to end on tiny inputs (its numbers are read by people, never asserted: timings
belong in the benchmark, not in unit tests)."""

from detlab import bench


def test_bench_compares_every_part_with_its_reference(capsys):
    rows = bench.main(["--batch-size", "1", "--image-size", "64", "--warmup", "0", "--repeats", "1",
                       "--eval-images", "3", "--eval-repeats", "1"])
    assert [name for name, _, _ in rows][:3] == ["forward", "loss", "postprocess"]
    assert [name for name, _, _ in rows[3:]] == [
        "COCO eval, hotcoco (3 images, 300 dets)", "COCO eval, faster_coco_eval (3 images, 300 dets)"
    ]
    assert all(ours > 0 and reference > 0 for _, ours, reference in rows)
    out = capsys.readouterr().out
    assert "| forward" in out and "ratio > 1: detlab is faster" in out
