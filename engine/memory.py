"""Giving freed memory back to the operating system.

CPython and numpy free through glibc's malloc, which keeps freed heap pages for later
(its arenas): after a large transient job (encoding the catalogue) the process keeps that
memory until it exits. `give_back_memory` asks glibc to return it (`malloc_trim`); on other
C libraries it does nothing."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc


def give_back_memory(collect: bool = True) -> bool:
    """Collect garbage (unless `collect` is False) and return the C heap's free pages to
    the system; True if glibc returned any. A training loop that frees tensors of a
    different size at every step calls it every few dozen steps: glibc's heap then stays
    small without giving every large tensor a mapping of its own (which page-faults it in
    again at every step: bert's fit spent 60 of its 170 CPU-seconds on the demo shop so)."""
    if collect:
        gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):  # not glibc
        return False
