"""Fault injection: kills, a full disk, two writers at once and damaged inputs, each run through
the real ``macflow`` command (a subprocess), with the cases of ``tests/bad_inputs.py``.

Every case asserts its outcome: a one-line error with exit status 2 that names the file or flag
at fault, or success with a result that checks out (a killed and resumed run equals an
uninterrupted one; a killed write leaves nothing that loads half-written; of two writers one
succeeds and the other is refused). The default run takes a sample of the table, one or two
cases of each kind; ``pytest -m slow tests/test_faults.py`` runs every case.
"""

from __future__ import annotations

import os
import shutil

import pytest

import bad_inputs

CASES = {f"{c.group}: {c.name}": c for c in bad_inputs.cases()}
SAMPLE = [
    "cli: unknown task",
    "agent options: macflow --agent.discount 1.5",
    "collect: existing --out refused first",
    "collect: disk full",
    "collect: two writers, one --out",
    "collect: killed while writing, then again",
    "datasets: data info: meta.json a list",
    "datasets: data info: recorded shape differs",
    "datasets: train: unknown env kwargs",
    "import: madiff --block-rows -5",
    "import: omiga directory, second file bad: nothing kept",
    "runs: resume a finished run: final rows once",
    "runs: resume, checkpoint of other networks",
    "runs: two resumes of one run",
    "runs: train on a full disk",
    "runs: killed after the first checkpoint, resumed = uninterrupted",
]
assert set(SAMPLE) <= set(CASES), set(SAMPLE) - set(CASES)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The shared inputs (built once) and the environment the commands run in."""
    root = tmp_path_factory.mktemp("faults")
    os.chmod(root, 0o755)
    env = {**os.environ, "MACFLOW_CACHE": str(root / "cache"), "HOME": str(root / "home")}
    env.pop("MACFLOW_DEBUG", None)
    if "MACFLOW_JAX_CACHE" not in env:  # share compiled programs with the other tests
        from macflow import cache_root

        env["MACFLOW_JAX_CACHE"] = str(cache_root() / "jax")
    bad_inputs.build_inputs(root / "base", env)
    yield root, env
    shutil.rmtree(root, ignore_errors=True)


def _check(name: str, inputs, index: int) -> None:
    root, env = inputs
    result = bad_inputs.run_case(CASES[name], root / "base", root, index, env)
    if result["verdict"] == "skipped":
        pytest.skip(result["line"])
    assert result["verdict"] == "pass", (
        f"{name}: expected {CASES[name].expect}, got {result['outcome']}: {result['line']}\n"
        f"{result.get('stderr', '')}"
    )


@pytest.mark.parametrize("name", SAMPLE)
def test_fault(name, inputs):
    _check(name, inputs, SAMPLE.index(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in CASES if n not in SAMPLE])
def test_every_bad_input(name, inputs):
    _check(name, inputs, 100 + list(CASES).index(name))
