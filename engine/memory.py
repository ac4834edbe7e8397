"""Giving freed memory back to the operating system.

CPython and numpy free through glibc's malloc, which keeps freed heap pages for later
(its arenas): after a large transient job (encoding the catalogue) the process keeps that
memory until it exits. `give_back_memory` asks glibc to return it (`malloc_trim`); on other
C libraries it does nothing."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc


def give_back_memory() -> bool:
    """Collect garbage and return the C heap's free pages to the system; True if glibc
    returned any."""
    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):  # not glibc
        return False
