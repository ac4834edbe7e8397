"""Helpers for data-source plugins that read text files."""

from __future__ import annotations

import codecs
from pathlib import Path


def detect_encoding(path: str | Path) -> str:
    """utf-8-sig when the whole file is valid UTF-8, else latin-1 (which never fails)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return "latin-1"
    return "utf-8-sig"
