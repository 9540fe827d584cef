"""Files written whole or not at all: checkpoints, results.json, cache entries and bench records.

`replaced_atomically(path)` gives an open binary file under a temporary name in path's folder; when the block
ends without an error the bytes are flushed to the disk and the file is renamed over path (atomic on POSIX and
Windows). A kill, a full disk or an error leaves the previous file as it was, and no temporary one behind.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def replaced_atomically(path: str | Path) -> Iterator[BinaryIO]:
    """An open binary file whose bytes replace `path` whole once the block ends without an error."""
    path = Path(path)
    # the same folder: a rename across file systems would be a copy, which a kill cuts short
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())  # the bytes on the disk before the name points at them
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomically(path: str | Path, text: str) -> None:
    """`text` (UTF-8) as the whole of `path`, through replaced_atomically."""
    with replaced_atomically(path) as file:
        file.write(text.encode())
