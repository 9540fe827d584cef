"""Files written whole or not at all (detlab.files): what a kill or an error mid-write leaves behind."""

import pytest

from detlab.files import replaced_atomically, write_text_atomically


def test_the_new_text_replaces_the_file_whole(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")
    write_text_atomically(path, "new")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_an_error_mid_write_leaves_the_previous_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "last.ckpt"
    path.write_bytes(b"previous")
    with pytest.raises(RuntimeError, match="disk full"):
        with replaced_atomically(path) as file:
            file.write(b"half of the ne")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
