"""Stage 2 of the stand-alone build: the program Nuitka turns into the single file
dist/shelfwise.

Nuitka's onefile bootstrap unpacks its payload (this launcher, compiled, plus PyInstaller's
one-folder bundle of Shelfwise in app/) into a fixed folder under the user's cache folder
once, and on later starts only checks the files there (cached mode, --onefile-tempdir-spec).
This launcher then replaces itself with the bundled program: same arguments, same process
id, same terminal, so `serve` gets Ctrl+C and `tui` the keyboard directly.
"""

import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
program = os.path.join(here, "app", "shelfwise", "shelfwise")
os.execv(program, [program, *sys.argv[1:]])
