"""The `macflow` command, run as a user would (subprocess)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from macflow.envs import registered

MACFLOW = [str(Path(sys.executable).with_name("macflow"))]
if not Path(MACFLOW[0]).exists():  # not installed as a script: use the module
    MACFLOW = [sys.executable, "-m", "macflow"]


def run(*args, ok=True, cwd=None, env=None):
    env = {**os.environ, "COLUMNS": "120", **(env or {})}
    out = subprocess.run([*MACFLOW, *args], capture_output=True, text=True, env=env, cwd=cwd)
    if ok:
        assert out.returncode == 0, out.stderr
    return out


HELP = {
    (): ["envs", "collect", "data", "quickstart"],
    ("envs",): ["List every registered task"],
    ("collect",): [e.env_id for e in registered()],
    ("collect", "toy/landmarks"): ["--out", "--num-agents", "--noise", "--episodes", "--seed"],
    ("collect", "toy/coordination"): ["--rare", "Probability of the optimal joint action"],
    ("collect", "mpe/spread"): ["--quality", "medium-replay", "--quick", "--critic", "--env-steps"],
    ("collect", "smax/3m"): ["--quality", "poor", "--transitions", "--episodes"],
    ("data",): ["info", "import"],
    ("data", "import"): ["og-marl", "omar", "omiga", "cfcql", "madiff", "--final", "--uid"],
    ("data", "info"): ["PATH", "--no-verify", "sha256", "--plot", "histogram"],
    ("quickstart",): ["make run", "mpe/spread", "--transitions", "--steps", "flow-BC"],
    ("export",): ["Run directory", "--out", "--seed", "--format", "onnx", "deploy.py", "refused"],
}


@pytest.mark.parametrize("args", list(HELP), ids=lambda a: " ".join(a) or "macflow")
def test_every_command_explains_itself(args):
    out = run(*args, "--help")
    for words in HELP[args]:
        assert words in out.stdout, f"`macflow {' '.join(args)} --help` lacks {words!r}"


def test_envs_lists_every_registered_task():
    out = run("envs").stdout
    for e in registered():
        assert e.env_id in out


def test_collect_then_info(tmp_path):
    out_dir = tmp_path / "xor"
    out = run("collect", "toy/xor", "--out", str(out_dir), "--episodes", "300", "--noise", "0.2")
    assert "300" in out.stdout and "collect" in out.stdout
    info = run("data", "info", str(out_dir), cwd=tmp_path).stdout
    assert "toy/xor" in info and "300 (300 terminated, 0 truncated)" in info
    meta = json.loads(run("data", "info", str(out_dir), "--as-json", cwd=tmp_path).stdout)
    assert meta["provenance"]["behaviour_config"] == {"noise": 0.2, "balance": 0.5}
    assert meta["provenance"]["command"].startswith("macflow collect toy/xor")
    assert meta["stats"]["episodes"] == 300
    # Refuses to overwrite without --overwrite: one clear line, exit status 2, no traceback.
    again = run("collect", "toy/xor", "--out", str(out_dir), "--episodes", "10", ok=False)
    assert again.returncode == 2 and "already holds a dataset" in again.stderr
    assert "Traceback" not in again.stderr


def test_bad_dataset_gives_one_clear_line(tmp_path):
    out_dir = tmp_path / "c"
    run("collect", "toy/coordination", "--out", str(out_dir), "--episodes", "50")
    actions = np.load(out_dir / "actions.npy")
    actions[7, 1] = 5
    np.save(out_dir / "actions.npy", actions)
    bad = run("data", "info", str(out_dir), ok=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert f"{out_dir / 'actions.npy'}: field 'actions'" in bad.stderr
    assert "checksum mismatch" in bad.stderr
    skipped = run("data", "info", str(out_dir), "--no-verify", ok=False)
    assert "at index (7, 1): action 5 is not in [0, 2)" in skipped.stderr.replace("\n", "")


def test_collect_rejects_bad_options(tmp_path):
    bad = run(
        "collect", "toy/coordination", "--out", str(tmp_path / "x"), "--rare", "1.5", ok=False
    )
    assert bad.returncode != 0 and "rare" in bad.stderr
    assert not (tmp_path / "x").exists()


def test_collect_a_quality_level_then_plot_it(tmp_path):
    from macflow import cache_root

    # A private behaviour cache (so training really runs), the shared compile cache.
    env = {"MACFLOW_CACHE": str(tmp_path / "cache"), "MACFLOW_JAX_CACHE": str(cache_root() / "jax")}
    tiny = ["--env-steps", "20000", "--snapshots", "2"]
    tiny += ["--eval-episodes", "16", "--random-episodes", "32"]
    out = tmp_path / "spread-medium"
    args = ["collect", "mpe/spread", "--quality", "medium", "--out", str(out)]
    run(*args, "--transitions", "500", *tiny, env=env)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["quality"] == "medium" and meta["stats"]["transitions"] == 500
    assert set(meta["reference_returns"]) == {"random", "expert"}
    assert meta["provenance"]["command"].startswith("macflow collect mpe/spread --quality medium")
    trained = list((tmp_path / "cache" / "behaviour" / "mpe-spread").glob("ppo-*/curve.json"))
    assert len(trained) == 1
    info = run("data", "info", str(out), cwd=tmp_path).stdout
    assert "reference" in info and "spread-medium-returns.png" in info
    png = (tmp_path / "spread-medium-returns.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    bad_args = ["collect", "mpe/spread", "--quality", "good", "--out", str(tmp_path / "x")]
    bad = run(*bad_args, *tiny, env=env, ok=False)
    assert bad.returncode == 2
    assert "mpe/spread has no quality 'good'; choose one of expert, medium" in bad.stderr


def test_quickstart_collects_trains_and_compares(tmp_path):
    from macflow import cache_root

    env = {"MACFLOW_CACHE": str(tmp_path / "cache"), "MACFLOW_JAX_CACHE": str(cache_root() / "jax")}
    tiny = ["--behaviour-steps", "20000", "--teacher-steps", "100", "--steps", "100"]
    args = ("quickstart", "--transitions", "1000", *tiny, "--seeds", "0", "--flow-bc")
    out = run(*args, cwd=tmp_path, env=env).stdout
    assert "mpe/spread" in out and "40 (0 terminated, 40 truncated)" in out
    for row in ("behaviour data", "flow-BC", "MAC-Flow", "normalised"):
        assert row in out
    quick = tmp_path / "runs" / "quickstart"
    for name in ("flow-BC", "MAC-Flow"):
        final = json.loads((quick / "runs" / name / "final.json").read_text())
        assert final["step"] == 200 and final["episodes"] == 320
    # A second run replaces the dataset atomically instead of failing.
    again = ("quickstart", "--transitions", "500", *tiny, "--seeds", "0")
    run(*again, cwd=tmp_path, env=env)
    meta = json.loads((quick / "data" / "mpe-spread-medium" / "meta.json").read_text())
    assert meta["stats"]["transitions"] == 500
