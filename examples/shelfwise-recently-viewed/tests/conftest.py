"""Lets `pytest` run from a plain checkout; after `pip install -e .` this changes nothing."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
