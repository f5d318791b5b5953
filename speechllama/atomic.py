"""Files written whole or not at all: the one atomic-write helper.

A file is written to a temporary file beside it and renamed over it (``os.replace`` is atomic on one
file system), so a reader, or a run resumed after a kill, sees the old file or the new one, never a
part; the temporary file is removed if writing fails. Folders are published the same way where they
are made (checkpoint steps in checkpoint.py, converted assets in assets.py, exports).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None], fsync: bool = False) -> Path:
    """``write(tmp)`` fills a temporary file in ``path``'s folder, which then replaces ``path``;
    ``fsync``: flushed to disk first (checkpoint metadata)."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str, fsync: bool = False) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), fsync)
