"""``import rwkvblocks.vision`` stays light: timm, open_clip, PIL and torchvision load only on use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_vision_pulls_no_heavy_package():
    code = (
        "import sys, rwkvblocks.vision\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'timm', 'open_clip', 'PIL', 'torchvision'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout
