"""`macflow train` and `macflow eval` as a user runs them: run directory, resume, NaN stop."""

import csv
import dataclasses
import json

import numpy as np
import pytest

from macflow.agents import AGENTS, get_agent
from macflow.api import main
from macflow.envs import make_env
from macflow.train import load_run

from test_cli import run

TINY = [
    "--agent.teacher-hidden", "8", "--agent.student-hidden", "8", "--agent.critic-hidden", "8",
    "--agent.teacher-steps", "10", "--agent.alpha", "0.1",
]  # fmt: skip


@pytest.fixture(scope="module")
def coord(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "coord"
    run("collect", "toy/coordination", "--out", str(path), "--episodes", "500")
    return path


def test_train_help_shows_the_algorithm_options():
    out = run("train", "--help").stdout
    for words in (
        "--agent.alpha",
        "--agent.shared-noise",
        "--steps",
        "--seeds",
        "--resume",
        "reference",
    ):
        assert words in out
    ref = run("train", "--preset", "reference", "--task", "toy/xor", "--help").stdout
    assert "per-agent" in ref  # the reference preset's teacher is the default shown


@pytest.mark.parametrize("algo", sorted(AGENTS))
def test_every_algorithm_has_train_help_with_its_own_options(algo, capsys):
    with pytest.raises(SystemExit) as done:
        main(["train", "--algo", algo, "--task", "smax/3m", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    config = get_agent(algo).presets["paper"](make_env("smax/3m").spec)
    for field in dataclasses.fields(config):
        assert f"--agent.{field.name.replace('_', '-')}" in out
    kind = "centralised" if get_agent(algo).centralised else "decentralised"
    assert f"evaluate its {kind} policy" in " ".join(out.split())


def test_a_discrete_only_algorithm_on_a_continuous_task_names_the_fix(capsys):
    with pytest.raises(SystemExit) as done:
        main(["train", "--algo", "icq", "--task", "toy/xor"])
    assert done.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "icq is for discrete actions only" in err and "toy/xor" in err


def test_train_writes_a_complete_run_directory_and_eval_reads_it(coord, tmp_path):
    out = run(
        "train", "--dataset", str(coord), "--steps", "20", "--log-every", "10", "--eval-every",
        "10", "--eval-episodes", "4", "--seeds", "0", "1", "--out", str(tmp_path), "--name", "r",
        *TINY,
    ).stdout  # fmt: skip
    assert "final evaluation" in out
    r = tmp_path / "r"
    for name in (
        "config.json",
        "metrics.csv",
        "evals.csv",
        "metrics.jsonl",
        "marl_eval.json",
        "final.json",
    ):
        assert (r / name).exists(), name
    config = json.loads((r / "config.json").read_text())
    assert config["agent"]["alpha"] == 0.1 and config["train"]["seeds"] == [0, 1]
    assert [s["name"] for s in config["stages"]] == ["teacher", "policy"]
    rows = list(csv.DictReader(open(r / "metrics.csv")))
    assert [(int(x["step"]), x["stage"]) for x in rows[::2]] == [
        (10, "teacher"),
        (20, "policy"),
        (30, "policy"),
    ]
    evals = list(csv.DictReader(open(r / "evals.csv")))
    periodic = {(step, mode) for step in (20, 30) for mode in ("sample", "zero")}
    final = {(30, "final-sample"), (30, "final-zero")}
    assert {(int(e["step"]), e["mode"]) for e in evals} == periodic | final
    marl = json.loads((r / "marl_eval.json").read_text())["toy"]["coordination"]["macflow"]
    assert set(marl) == {"run_0", "run_1"}
    assert set(marl["run_0"]) == {"step_0", "step_1", "absolute_metrics"}
    assert marl["run_0"]["step_1"]["step_count"] == 30
    assert len(marl["run_0"]["absolute_metrics"]["return"]) == 40  # 10x the periodic episodes
    final = json.loads((r / "final.json").read_text())
    assert final["behaviour"]["return_mean"] == pytest.approx(1.05, abs=0.03)

    again = run("eval", str(r), "--episodes", "16").stdout
    assert "evaluation" in again
    assert json.loads((r / "eval.json").read_text())["episodes"] == 16

    taken = run("train", "--dataset", str(coord), "--out", str(tmp_path), "--name", "r", ok=False)
    assert taken.returncode == 2 and "pass --resume" in taken.stderr


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(coord, tmp_path):
    options = ["--steps", "20", "--log-every", "10", "--checkpoint-every", "10"]
    out = run(
        "train", "--dataset", str(coord), *options, "--out", str(tmp_path), "--name", "boom",
        *TINY, "--agent.lr", "1e30", ok=False,
    )  # fmt: skip
    assert out.returncode == 3
    assert "training stopped" in out.stderr and "became NaN/inf" in out.stderr
    assert "last good checkpoint" in out.stderr and "Traceback" not in out.stderr
    _, _, _, agents, step = load_run(tmp_path / "boom")
    assert step == 0
    import jax

    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(agents))


def test_train_on_a_task_collects_its_default_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("MACFLOW_CACHE", str(tmp_path / "cache"))
    run(
        "train", "--task", "toy/xor", "--steps", "10", "--log-every", "10", "--eval-episodes", "2",
        "--out", str(tmp_path), "--name", "x", *TINY,
    )  # fmt: skip
    assert (tmp_path / "cache" / "datasets" / "toy-xor" / "scripted" / "meta.json").exists()
    config = json.loads((tmp_path / "x" / "config.json").read_text())
    assert config["dataset"]["env_id"] == "toy/xor"


def test_tensorboard_event_files(coord, tmp_path):
    run(
        "train", "--dataset", str(coord), "--steps", "10", "--log-every", "10", "--eval-episodes",
        "2", "--out", str(tmp_path), "--name", "tb", "--tensorboard", *TINY,
    )  # fmt: skip
    events = list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
