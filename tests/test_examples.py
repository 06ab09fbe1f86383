"""Every example runs to the end in quick mode."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("script", ["prune_in_fit.py", "qat.py", "lowrank.py", "distill.py"])
def test_example_runs_in_quick_mode(script, data_dir):
    out = subprocess.run([sys.executable, str(EXAMPLES / script), "--quick"], capture_output=True,
                         text=True, timeout=600,
                         env=dict(os.environ, TFCOMPRESS_DATA_DIR=str(data_dir),
                                  TF_CPP_MIN_LOG_LEVEL="2"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip()
