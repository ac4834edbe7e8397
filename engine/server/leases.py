"""Which of several server processes on one database does the things only one may do.

`shelfwise serve --workers N` (or N `shelfwise serve` processes behind a proxy) answer from
one database; each keeps its own models, caches and incremental state and folds in every
event, whoever stored it (`learning.catch_up`). Two things must be done by one process:

- saving the incremental state (`Serving.save`): the leader, the process holding
  `<db>-leader.lock`; the others keep theirs in memory and load the leader's saves;
- a background retrain: the process holding `<db>-train.lock` while it runs; a second
  `POST /train`, to any process, is refused with 409.

Both are `flock` locks on a file beside the database: the kernel releases one when its
process ends, however it ends, so a killed leader is replaced by the next process that
asks (each asks every `LEADER_RETRY` seconds). The holder's pid is written in the file."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LEADER_RETRY = 2.0  # seconds between a follower's attempts to become the leader


class FileLease:
    """An exclusive, non-blocking lock on the file `path`, held by at most one open file
    of one process (a second holder in the same process is refused too)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = None

    @classmethod
    def beside(cls, db_path: str | Path, role: str) -> FileLease:
        return cls(f"{db_path}-{role}.lock")

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> bool:
        """Take the lock if nobody holds it; True if this one holds it now."""
        if self._file is not None:
            return True
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            return False
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._file = f
        return True

    def release(self) -> None:
        if self._file is not None:
            f, self._file = self._file, None
            with contextlib.suppress(OSError):
                f.truncate(0)
                fcntl.flock(f, fcntl.LOCK_UN)
            f.close()

    def holder(self) -> int | None:
        """The pid of the process holding the lock, as its file says (None when free).
        Read without taking the lock, so that asking never makes a taker fail; a pid left
        by a process that was killed is recognised as gone."""
        if self._file is not None:
            return os.getpid()
        try:
            text = self.path.read_text().strip()
        except OSError:
            return None
        if not text.isdigit():
            return None
        try:
            os.kill(int(text), 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # alive, another user's
            pass
        return int(text)
