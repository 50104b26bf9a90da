"""Each committed course backbone loads offline in its framework and scores what backbones.json records."""
import json
import subprocess
import sys

import pytest

from conftest import REPO
from course import weights


@pytest.mark.parametrize("fw", ["torch", "keras"])
def test_backbone_loads_offline_and_matches_recorded_accuracy(fw, tmp_path):
    recorded = json.loads(weights.RECORD_FILE.read_text())[fw]["source_val_accuracy"]
    code = f"from course import pretrain; print(pretrain.evaluate_{fw}())"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "FTLAB_WEIGHTS": "course", "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(["unshare", "-n", sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    measured = float(result.stdout.strip().splitlines()[-1])
    # float16 storage is already included in the record; allow one image in 500 for kernel-order noise
    assert abs(measured - recorded) <= 0.002, (measured, recorded)
    assert measured > 0.8, f"the {fw} backbone is too weak to teach transfer: {measured:.1%}"
