"""The problems a user can fix, as detlab's own exception types, and the one way every CLI reports them.

A DetlabError's message names the key, file or record and says what to do. `user_errors(prog)` wraps a CLI's
work: a user's problem prints `<prog>: error: <message>` on stderr and exits 2; anything else is a bug and
keeps its traceback (HYDRA_FULL_ERROR=1 shows the traceback of a user's problem too).

The types subclass the builtin a caller would catch (ValueError, OSError), so that `except ValueError` and
`pytest.raises(ValueError)` keep working.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

# What the operating system says when a folder cannot take a file; each names err.filename.
STORAGE_ERRNOS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
}


class DetlabError(Exception):
    """A problem the user can fix; the message names the key, file or record and the fix."""


class ConfigError(DetlabError, ValueError):
    """A config that cannot run; the message names the key and what would be valid."""


class DataError(DetlabError, ValueError):
    """A dataset file or record that cannot be read or used; the message names the file, record and field."""


class CheckpointError(DetlabError, ValueError):
    """A checkpoint that cannot be read or does not fit the run; the message names the file."""


class StorageError(DetlabError, OSError):
    """A folder detlab must write to that refuses (permissions, read-only, full disk); names the folder."""


class DivergenceError(DetlabError, FloatingPointError):
    """Training or validation produced non-finite losses or predictions; names the step, the terms and the fix."""


def check_positive(prefix: str, **values: int | Sequence[int]) -> None:
    """Counts a component is built from (channels, strides, sizes, ...): each a positive integer, or a list of
    them; otherwise a ConfigError naming `<prefix>.<key>` (torch would fail later, deep inside a layer)."""
    _check_each(prefix, values, lambda n: isinstance(n, int) and n > 0, "a positive integer", "positive integers")


def check_count(prefix: str, **values: int | Sequence[int]) -> None:
    """Counts that may be 0 (workers, warm-up steps or epochs, images to draw): each an integer >= 0, or a list
    of them; otherwise a ConfigError naming `<prefix>.<key>`."""
    _check_each(prefix, values, lambda n: isinstance(n, int) and n >= 0, "an integer >= 0", "integers >= 0")


def check_non_negative(prefix: str, **values: float | Sequence[float]) -> None:
    """Weights, paddings, minimum sizes, probabilities, counts that may be 0: each a finite number >= 0, or a list of
    them; a negative one would train against a term or pad nothing it can, and is refused naming `<prefix>.<key>`."""
    _check_each(prefix, values, lambda n: is_number(n) and n >= 0, "a number >= 0", "numbers >= 0")


def is_number(value: object) -> bool:
    """A config value that is a finite int or float (a bool is not a number here: YAML's true would pass as 1)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_each(prefix: str, values: dict, ok, one_is: str, many_are: str) -> None:
    for key, value in values.items():
        one = isinstance(value, str) or not isinstance(value, Sequence)
        numbers = [value] if one else list(value)
        if not all(ok(n) and not isinstance(n, bool) for n in numbers):
            raise ConfigError(f"{prefix}.{key}={value if one else numbers!r} must be "
                              f"{one_is if one else 'a list of ' + many_are}")


@contextlib.contextmanager
def writing(path: str | Path, what: str, fix: str) -> Iterator[None]:
    """Turn the OS refusing a write of `path` (a file, or a folder written into) into a StorageError naming
    it, `what` (a key: `DETLAB_CACHE`, `hydra.run.dir`) and `fix`. Other errors pass through."""
    try:
        yield
    except OSError as err:
        if isinstance(err, DetlabError) or err.errno not in STORAGE_ERRNOS:
            raise
        raise StorageError(f"cannot write {path} ({what}): {STORAGE_ERRNOS[err.errno]}; {fix}") from err


def check_writable(folder: str | Path, what: str, fix: str) -> None:
    """Create `folder` and write a probe file into it, before any work: StorageError naming `what` and `fix`."""
    folder = Path(folder)
    with writing(folder, what, fix):
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".detlab-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()


def check_not_an_input(outputs: Sequence[str | Path], option: str, inputs: Sequence[str | Path]) -> None:
    """A ConfigError unless every file of `outputs` (what a command writes, as `option` asks) is none of `inputs`
    (the files it reads): the annotation json given as detlab-predict's --out, or a PNG photo that its --draw folder
    would write the drawing over, was lost. Each path is resolved once (a folder of thousands of photos)."""
    read = {Path(source).resolve(): source for source in inputs}
    for output in outputs:
        source = read.get(Path(output).resolve())
        if source is not None:
            raise ConfigError(f"{option}: writing {output} would replace {source}, which this command reads; give "
                              f"{option} another path")


def user_message(err: BaseException) -> str | None:
    """The one-line message for a problem the user can fix, or None for a bug (which keeps its traceback)."""
    # hydra.utils.instantiate wraps what a constructor raises: look through it. Only a process that imported Hydra
    # can hold its wrapper, and the CLIs that need no Hydra (detlab-eval results) must not pay for importing it.
    hydra_errors = sys.modules.get("hydra.errors")
    while hydra_errors and isinstance(err, hydra_errors.InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    if isinstance(err, OSError) and not isinstance(err, DetlabError) and err.errno in STORAGE_ERRNOS:
        # A file access the code did not expect to fail (a logger's file, a library's cache): the OS names it.
        return f"cannot use {err.filename or '(unnamed file)'}: {STORAGE_ERRNOS[err.errno]}; free space or fix " \
               "the folder's permissions, or point the run elsewhere (hydra.run.dir=..., DETLAB_CACHE=...)"
    return _unwrap_worker(err) if isinstance(err, DetlabError) else None


def _unwrap_worker(err: BaseException) -> str:
    """The original message of an error raised in a DataLoader worker.

    torch re-raises it in the main process as the same type, but with the message "Caught <Type> in DataLoader
    worker process N.\\nOriginal Traceback ...": the worker's whole traceback, ending in the formatted
    "<module>.<Type>: <message>". Keep only that message.
    """
    message = str(err)
    if not (message.startswith("Caught ") and "\nOriginal Traceback" in message):
        return message
    cls = type(err)
    marker = f"{cls.__module__}.{cls.__qualname__}: " if cls.__module__ != "builtins" else f"{cls.__qualname__}: "
    _, found, tail = message.rpartition("\n" + marker)
    return tail.rstrip("\n") if found else message


@contextlib.contextmanager
def user_errors(prog: str) -> Iterator[None]:
    """Run a CLI's work: a user's problem prints one message on stderr and exits 2; a bug keeps its traceback."""
    try:
        yield
    except Exception as err:
        message = user_message(err)
        if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"{prog}: error: {message}\n(set HYDRA_FULL_ERROR=1 for the stack trace)", file=sys.stderr, flush=True)
        sys.exit(2)
