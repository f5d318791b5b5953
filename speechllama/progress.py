"""Progress bars that stay readable in logs: frequent redraws on a terminal, a line every 30 s
otherwise (CI logs, `nohup`, files)."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress(iterable=None, **kwargs) -> tqdm:
    kwargs.setdefault("mininterval", 0.5 if sys.stderr.isatty() else 30.0)
    return tqdm(iterable, **kwargs)
