"""Write-to-temp-then-rename, so a killed stage never leaves a file under its final name."""

import contextlib
import os
from pathlib import Path


def tmp_path(path: str | os.PathLike) -> Path:
    """The temporary name a stage writes `path` under until it is complete."""
    path = Path(path)
    return path.with_name(path.name + ".tmp")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """Open `path.tmp` for writing; on success fsync and rename it to `path`, on failure remove it."""
    final, tmp = Path(path), tmp_path(path)
    try:
        with open(tmp, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
