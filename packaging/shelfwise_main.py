"""Entry point of the frozen `shelfwise` executable (PyInstaller's analysis starts here).

The same as the installed console script, `engine.cli:main`."""

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()  # a no-op unless a worker process re-enters the binary
    from engine.cli import main

    sys.exit(main())
