"""The one bootstrap for ``python bench/X.py`` (and for a helper script that imports ``common`` from bench/): the
repository root on ``sys.path``, so that ``bench`` and ``kitlib`` import as packages. ``python -m bench.X`` from the
root needs nothing of this."""
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
