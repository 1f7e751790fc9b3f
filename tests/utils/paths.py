"""Where things are: the checkout, and the command that makes and removes test hosts."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTHOSTS = [sys.executable, str(ROOT / "scripts" / "testhosts.py")]
