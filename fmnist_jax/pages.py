"""Files that commands write: the docs pages (docs/RESULTS.md, docs/PERFORMANCE.md), where a
block between two marker lines is replaced and every other line stays as it was, and JSON
results. Every write is atomic (a reader never sees half of a file)."""

from __future__ import annotations

import json
import os
from typing import Any


def split(page: str, begin: str, end: str) -> tuple[str, str, str] | None:
    """(before `begin`, between the markers, after `end`); None unless both are there, in order."""
    start = page.find(begin)
    stop = page.find(end, start + len(begin)) if start >= 0 else -1
    if stop < 0:
        return None
    return page[:start], page[start + len(begin) : stop], page[stop + len(end) :]


def read(path: str) -> str:
    """The page's text; '' where there is no such file."""
    if not os.path.isfile(path):
        return ""
    with open(path) as f:
        return f.read()


def write(path: str, text: str) -> None:
    """Writes `text` to `path` atomically, making its folder if needed."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str, payload: Any) -> None:
    """Writes `payload` as indented JSON, atomically."""
    write(path, json.dumps(payload, indent=2) + "\n")
