"""Without an optional extra installed, commands say which extra to install, in one line, and
`macflow envs` still lists every task. The extras are hidden from a subprocess by putting None
in ``sys.modules`` (so ``import mujoco`` fails as if it were not installed)."""

import subprocess
import sys

HIDE = {
    "mamujoco": ["gymnasium_robotics", "mujoco"],
    "jaxmarl": ["jaxmarl"],
    "ray": ["ray"],
}


def _macflow(args: list[str], hidden: list[str]) -> subprocess.CompletedProcess:
    code = (
        "import sys\n"
        f"for name in {hidden!r}: sys.modules[name] = None\n"
        "from macflow.api import main\n"
        f"main({args!r})\n"
    )
    env = {"COLUMNS": "200", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )


def test_envs_lists_every_task_and_names_the_missing_extras():
    out = _macflow(["envs"], HIDE["mamujoco"] + HIDE["jaxmarl"])
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    for task in ("mamujoco/2ant", "smax/3m", "mpe/spread", "toy/xor"):
        assert task in out.stdout
    assert "mamujoco (missing)" in out.stdout and "jaxmarl (missing)" in out.stdout
    assert "pip install 'macflow[mamujoco]'" in out.stdout
    assert "pip install 'macflow[jaxmarl]'" in out.stdout


def test_commands_on_a_missing_extra_fail_in_one_line_naming_it(tmp_path):
    sweep = tmp_path / "s.toml"
    sweep.write_text(
        f'out = "{tmp_path / "out"}"\ndata_root = "{tmp_path}"\n'
        '[tasks]\n"mpe/spread" = ["medium"]\n[[algos]]\nalgo = "bc"\n'
    )
    cases = [
        (["train", "--task", "mamujoco/2ant", "--steps", "10"], "mamujoco"),
        (["sweep", str(sweep)], "ray"),
    ]
    for args, extra in cases:
        out = _macflow(args, HIDE[extra])
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert "Traceback" not in out.stderr, out.stderr
        assert f"'{extra}' extra" in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) <= 3, out.stderr  # one (wrapped) line
