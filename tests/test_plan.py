"""`macflow train` says up front what it will do and how long it will take on this machine."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

MACFLOW = str(Path(sys.executable).with_name("macflow"))


def test_train_prints_the_plan_and_an_estimate_before_training(tmp_path):
    # The paper preset's defaults on a toy: 100k teacher + 100k policy updates of 4 x 512 networks.
    env = os.environ | {"COLUMNS": "400"}
    cmd = [MACFLOW, "train", "--task", "toy/coordination", "--out", str(tmp_path), "--no-progress"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    start, lines = time.time(), []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("estimate:"):
                break
    finally:
        proc.kill()
        proc.wait()
    took = time.time() - start
    text = "".join(lines)
    plan = next(ln for ln in lines if ln.startswith("plan:"))
    assert "teacher 100,000 + policy 100,000 updates" in plan
    assert "teacher 4x512, student 4x512, critic 4x512" in plan
    estimate = lines[-1]
    assert estimate.startswith("estimate:") and "updates/s on this cpu" in estimate, text
    # Over 30 minutes in all (200k updates at the measured rate), the estimate names the smaller
    # preset; under, it does not (how fast this machine is decides which).
    rate = float(re.search(r"estimate: ([\d,.]+) updates/s", estimate).group(1).replace(",", ""))
    assert ("--preset small" in estimate) == (200_000 / rate > 30 * 60), estimate
    assert took < 120, f"the estimate took {took:.0f} s"
