"""A run directory under faults: two writers, kills at any moment, damaged files, bad options.

Kills are real: ``python -m macflow train`` in a subprocess, SIGKILLed at a moment found by
polling its files, then resumed with ``--resume`` and compared with an uninterrupted run (train
seconds aside). Damaged files are made by hand in a copy of a finished toy run; each must end in
one ValueError that names the file (``macflow`` prints it as a one-line error), or, for a torn
last line, in a warning naming the file and a run that resumes to the right result.
``pytest -m slow tests/test_run_faults.py`` adds a kill at each moment on its own, a kill of
resumes at fixed delays and two resumes started at once.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from macflow.agents.bc import BC
from macflow.data import save
from macflow.data.collect import collect
from macflow.envs import entry
from macflow.files import Busy
from macflow.train import TrainConfig, evaluate_run, load_run, train

import builders

MACFLOW = [sys.executable, "-m", "macflow"]
FILES = ["metrics.csv", "evals.csv", "metrics.jsonl", "marl_eval.json", "final.json"]


@pytest.fixture(scope="module")
def xor(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "xor"
    e = entry("toy/xor")
    save(collect(e.env_cls()(), e.behaviour_cls()(), 300), path)
    return path


def _train(ds, out, name, steps=20, resume=False, hidden=8, spec=None, **options):
    """A tiny BC run on ``ds`` (toy/xor's unless ``spec`` says otherwise), in this process."""
    spec = spec or entry("toy/xor").env_cls()().spec
    cfg = dict(
        dataset=ds, algo="bc", steps=steps, log_every=10, eval_every=10, checkpoint_every=10,
        eval_episodes=2, final_eval_factor=1, out=out, name=name, resume=resume, progress=False,
    )  # fmt: skip
    agent = dataclasses.replace(BC.presets["paper"](spec), hidden=(hidden, hidden))
    return train(TrainConfig(**(cfg | options)), agent)


@pytest.fixture(scope="module")
def done(xor, tmp_path_factory):
    """Finished runs to copy: ``run`` (20 updates), ``run30`` (30) and ``run16`` (wider)."""
    out = tmp_path_factory.mktemp("runs")
    _train(xor, out, "run")
    _train(xor, out, "run30", steps=30)
    _train(xor, out, "run16", hidden=16)
    return out


def _copy(done, tmp_path, name="run"):
    shutil.copytree(done / name, tmp_path / "run")
    return tmp_path / "run"


def _snapshot(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _csv(path):
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k != "train_seconds"} for r in csv.DictReader(f)]


def _jsonl(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in rows]


def _assert_same(a: Path, b: Path) -> None:
    """Run ``a`` holds what run ``b`` holds (train seconds and hardware aside)."""
    assert (a / "metrics.csv").read_bytes() == (b / "metrics.csv").read_bytes()
    assert _csv(a / "evals.csv") == _csv(b / "evals.csv")
    assert _jsonl(a / "metrics.jsonl") == _jsonl(b / "metrics.jsonl")
    assert (a / "marl_eval.json").read_bytes() == (b / "marl_eval.json").read_bytes()
    final_a, final_b = (json.loads((r / "final.json").read_text()) for r in (a, b))
    assert final_a.pop("hardware") and final_b.pop("hardware")
    assert final_a == final_b
    ckpt = Path("checkpoints") / "latest.msgpack"
    assert (a / ckpt).read_bytes() == (b / ckpt).read_bytes()


def _leftovers(out: Path) -> list[str]:
    """Hidden files (temporary files, locks, temporary run directories) in or beside runs."""
    return sorted(str(p.relative_to(out)) for p in out.rglob(".*"))


def _final_rows(run: Path) -> int:
    return sum(r["mode"].startswith("final-") for r in _csv(run / "evals.csv"))


# -- 1. one writer at a time, inside --out ------------------------------------------------------

HOLD = (
    "import sys; from macflow.files import hold; h = hold(sys.argv[1]); h.__enter__(); "
    "print('held', flush=True); sys.stdin.read()"
)


def test_a_second_writer_of_a_run_is_refused_until_the_first_is_gone(xor, done, tmp_path):
    run = _copy(done, tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _snapshot(run)
        with pytest.raises(Busy, match="being written by another process") as err:
            _train(xor, tmp_path, "run", resume=True)
        assert str(run) in str(err.value) and f"pid {holder.pid}" in str(err.value)
        with pytest.raises(Busy):  # a fresh train of the same name is refused the same way
            _train(xor, tmp_path, "run")
        assert _snapshot(run) == before
    finally:
        holder.kill()  # a killed holder frees the lock: the kernel drops it
        holder.wait()
    _train(xor, tmp_path, "run", resume=True)
    assert _final_rows(run) == 2
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["../x", "ABSOLUTE", "a/b", "", ".", "..", ".hidden"])
def test_a_name_that_is_not_a_plain_directory_name_is_refused(xor, tmp_path, name):
    out = tmp_path / "out"
    name = str(tmp_path / "x") if name == "ABSOLUTE" else name
    with pytest.raises(ValueError, match="--name"):
        _train(xor, out, name)
    assert sorted(tmp_path.iterdir()) == []  # nothing written, inside --out or outside


# -- 2. resume bookkeeping -----------------------------------------------------------------------


def test_resuming_a_finished_run_writes_its_final_evaluation_once(xor, done, tmp_path):
    run = _copy(done, tmp_path)
    _train(xor, tmp_path, "run", resume=True)
    assert _final_rows(run) == 2
    _assert_same(run, done / "run")
    assert _leftovers(tmp_path) == []


def _drop_lines(path: Path, marker: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(ln for ln in lines if marker not in ln))


@pytest.mark.parametrize("left", ["final-sample rows", "every final row"])
def test_a_run_killed_in_its_final_evaluation_resumes_to_the_same_files(xor, done, tmp_path, left):
    """What a kill while writing the final evaluation leaves: some of its rows, no final.json."""
    run = _copy(done, tmp_path)
    (run / "final.json").unlink()
    if left == "final-sample rows":
        _drop_lines(run / "evals.csv", ",final-zero,")
        _drop_lines(run / "metrics.jsonl", '"final-zero"')
    _train(xor, tmp_path, "run", resume=True)
    _assert_same(run, done / "run")


def test_train_seconds_continue_from_the_checkpoint_after_resume(xor, done, tmp_path):
    run = _copy(done, tmp_path)
    clock = run / "checkpoints" / "latest.json"
    recorded = json.loads(clock.read_text())
    last = [float(r["train_seconds"]) for r in csv.DictReader(open(run / "evals.csv"))][-1]
    assert recorded["step"] == 20 and round(recorded["train_seconds"], 3) == last
    clock.write_text(json.dumps({"step": 20, "train_seconds": 1000.0}))
    _train(xor, tmp_path, "run", steps=30, resume=True)
    rows = list(csv.DictReader(open(run / "evals.csv")))
    later = [float(r["train_seconds"]) for r in rows if int(r["step"]) > 20]
    assert later and min(later) > 1000.0
    assert json.loads(clock.read_text())["train_seconds"] > 1000.0


def test_resume_below_the_checkpoint_is_refused_before_writing_anything(xor, done, tmp_path):
    run = _copy(done, tmp_path)
    before = _snapshot(run)
    with pytest.raises(ValueError, match="update 20") as err:
        _train(xor, tmp_path, "run", steps=10, resume=True)
    assert "--steps 20" in str(err.value) and "latest.msgpack" in str(err.value)
    assert _snapshot(run) == before


@pytest.mark.parametrize("logs", [True, False])
def test_an_old_run_without_a_checkpoint_resumes_from_update_0(xor, done, tmp_path, logs):
    run = _copy(done, tmp_path)
    shutil.rmtree(run / "checkpoints")
    for name in [] if logs else FILES:
        (run / name).unlink()
    _train(xor, tmp_path, "run", resume=True)
    _assert_same(run, done / "run")


@pytest.mark.parametrize("resume", [False, True])
def test_a_start_killed_before_its_run_existed_is_cleaned_up_by_the_next(
    xor, done, tmp_path, resume
):
    stale = tmp_path / ".run.tmp-killed"  # a temporary run directory a killed start left
    (stale / "checkpoints").mkdir(parents=True)
    shutil.copy(done / "run" / "config.json", stale / "config.json")
    _train(xor, tmp_path, "run", resume=resume)
    _assert_same(tmp_path / "run", done / "run")
    assert _leftovers(tmp_path) == []


def test_resume_of_no_run_names_it(xor, tmp_path):
    with pytest.raises(ValueError, match="no run") as err:
        _train(xor, tmp_path, "nope", resume=True)
    assert str(tmp_path / "nope") in str(err.value)
    assert not (tmp_path / "nope").exists() and _leftovers(tmp_path) == []


# -- 2e. kills at any moment ---------------------------------------------------------------------

STEPS = 200
KILLED = [
    "--algo", "bc", "--agent.hidden", "8", "8", "--steps", str(STEPS), "--log-every", "10",
    "--eval-every", "20", "--checkpoint-every", "20", "--eval-episodes", "2",
    "--final-eval-factor", "250", "--no-progress", "--name", "k",
]  # fmt: skip


def _env():
    env = {**os.environ, "COLUMNS": "120"}
    env.pop("MACFLOW_DEBUG", None)
    return env


def _macflow(*args, ok=True):
    out = subprocess.run([*MACFLOW, *args], capture_output=True, text=True, env=_env())
    if ok:
        assert out.returncode == 0, out.stderr
    return out


@pytest.fixture(scope="module")
def whole(xor, tmp_path_factory):
    """The uninterrupted run the killed ones must end up equal to."""
    out = tmp_path_factory.mktemp("whole")
    _macflow("train", "--dataset", str(xor), *KILLED, "--out", str(out))
    return out / "k"


def _created(out: Path) -> bool:
    """config.json is written: in the temporary run directory, or in the run."""
    return (out / "k" / "config.json").exists() or any(out.glob(".k.tmp-*/config.json"))


def _checkpointed(out: Path) -> bool:
    return (out / "k" / "checkpoints" / "latest.msgpack").exists()


def _evaluated(out: Path, rows: int = 8) -> bool:
    path = out / "k" / "evals.csv"
    return path.exists() and path.read_bytes().count(b"\n") > rows


def _finishing(out: Path) -> bool:
    """The last checkpoint is written: the final evaluation runs."""
    try:
        return json.loads((out / "k" / "checkpoints" / "latest.json").read_text())["step"] == STEPS
    except (OSError, ValueError):
        return False


def _kill_when(argv: list[str], ready, out: Path, timeout: float = 300) -> None:
    """Run ``macflow argv`` and SIGKILL it as soon as ``ready(out)`` holds."""
    proc = subprocess.Popen(
        [*MACFLOW, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env()
    )
    deadline = time.monotonic() + timeout
    while not ready(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.003)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"it ended before the kill: {err.decode()[-2000:]}"


def test_a_run_killed_at_each_stage_resumes_to_the_uninterrupted_runs_files(xor, whole, tmp_path):
    """Killed while being created, then its resume killed while training, then the next one
    killed in the final evaluation: the last resume ends with the uninterrupted run's files."""
    start = ["train", "--dataset", str(xor), *KILLED, "--out", str(tmp_path)]
    _kill_when(start, _created, tmp_path)
    _kill_when([*start, "--resume"], lambda out: _evaluated(out, 8), tmp_path)
    _kill_when([*start, "--resume"], _finishing, tmp_path)
    _macflow(*start, "--resume")
    _assert_same(tmp_path / "k", whole)
    assert _leftovers(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "ready",
    [_created, _checkpointed, lambda out: _evaluated(out, 4), _finishing],
    ids=["created", "first checkpoint", "evaluated", "final evaluation"],
)
def test_a_run_killed_once_resumes_to_the_uninterrupted_runs_files(xor, whole, tmp_path, ready):
    start = ["train", "--dataset", str(xor), *KILLED, "--out", str(tmp_path)]
    _kill_when(start, ready, tmp_path)
    _macflow(*start, "--resume")
    _assert_same(tmp_path / "k", whole)
    assert _leftovers(tmp_path) == []


@pytest.mark.slow
def test_resumes_killed_at_fixed_delays_still_end_right(xor, whole, tmp_path):
    """Kill a run, then each of its resumes, after a growing delay: wherever a kill lands
    (reading, truncating the logs, training, evaluating), the next resume repairs it."""
    start = ["train", "--dataset", str(xor), *KILLED, "--out", str(tmp_path)]
    _kill_when(start, _checkpointed, tmp_path)
    for delay in (2.5, 3.0, 3.3, 3.6, 3.9, 4.2, 4.5):
        proc = subprocess.Popen(
            [*MACFLOW, *start, "--resume"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=_env(),
        )  # fmt: skip
        time.sleep(delay)
        proc.kill()
        proc.wait()
    _macflow(*start, "--resume")
    _assert_same(tmp_path / "k", whole)
    assert _leftovers(tmp_path) == []


@pytest.mark.slow
def test_two_resumes_at_once_one_is_refused(xor, done, tmp_path):
    run = _copy(done, tmp_path)
    argv = [*MACFLOW, "train", "--dataset", str(xor), *KILLED[:-2], "--out", str(tmp_path)]
    argv += ["--name", "run", "--resume"]
    procs = [
        subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
        )
        for _ in range(2)
    ]
    outs = [p.communicate() for p in procs]
    codes = sorted(p.returncode for p in procs)
    errors = "".join(err for _, err in outs)
    assert codes in ([0, 0], [0, 2]), errors
    if codes == [0, 2]:  # they overlapped: the second was refused
        assert "being written by another process" in errors
    assert _final_rows(run) == 2
    steps = [int(r["step"]) for r in csv.DictReader(open(run / "metrics.csv"))]
    assert steps == sorted(steps) and len(steps) == len(set(steps))
    assert _leftovers(tmp_path) == []


# -- 3. damaged files: one ValueError naming the file ---------------------------------------------


def _eval(run):
    return evaluate_run(run, episodes=2)


def _resume(xor, tmp_path, **options):
    return lambda run: _train(xor, tmp_path, "run", resume=True, **options)


def test_eval_of_a_run_without_a_checkpoint_names_the_checkpoint(done, tmp_path):
    run = _copy(done, tmp_path)
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(ValueError, match="latest.msgpack"):
        _eval(run)


def test_resume_without_config_json_names_it(xor, done, tmp_path):
    run = _copy(done, tmp_path)
    (run / "config.json").unlink()
    before = _snapshot(run)
    with pytest.raises(ValueError, match="config.json"):
        _train(xor, tmp_path, "run", resume=True)
    assert _snapshot(run) == before


@pytest.mark.parametrize("how", ["eval", "resume"])
@pytest.mark.parametrize(
    "text,says",
    [('{\n  "algo": "bc",\n  oops\n}', "line 3"), ("[]", "not a run's record"), ("", "line 1")],
    ids=["bad JSON", "a list", "empty"],
)
def test_a_damaged_config_json_names_the_file(xor, done, tmp_path, how, text, says):
    run = _copy(done, tmp_path)
    (run / "config.json").write_text(text)
    act = _eval if how == "eval" else _resume(xor, tmp_path)
    with pytest.raises(ValueError, match=says) as err:
        act(run)
    assert str(run / "config.json") in str(err.value)


def test_eval_of_a_config_with_an_unknown_algorithm_names_the_file(done, tmp_path):
    run = _copy(done, tmp_path)
    record = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(record | {"algo": "nope"}))
    with pytest.raises(ValueError, match="nope") as err:
        _eval(run)
    assert "config.json" in str(err.value)


@pytest.mark.parametrize("how", ["eval", "resume"])
def test_a_checkpoint_of_other_networks_names_the_file_and_the_key(xor, done, tmp_path, how):
    run = _copy(done, tmp_path)
    shutil.copy(done / "run16" / "checkpoints" / "latest.msgpack", run / "checkpoints")
    act = _eval if how == "eval" else _resume(xor, tmp_path)
    with pytest.raises(ValueError, match="latest.msgpack") as err:
        act(run)
    assert "Dense_0" in str(err.value) and "16" in str(err.value)


@pytest.mark.parametrize("how", ["eval", "resume"])
@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],
        lambda data: b"\x00" * 100,
        lambda data: b"",
        lambda data: b"\x92\x01\x02",  # msgpack's [1, 2]: readable, not a checkpoint
    ],
    ids=["truncated", "garbage", "empty", "not a checkpoint"],
)
def test_a_damaged_checkpoint_names_the_file(xor, done, tmp_path, how, damage):
    run = _copy(done, tmp_path)
    path = run / "checkpoints" / "latest.msgpack"
    path.write_bytes(damage(path.read_bytes()))
    act = _eval if how == "eval" else _resume(xor, tmp_path)
    with pytest.raises(ValueError, match="latest.msgpack"):
        act(run)


@pytest.mark.parametrize("name", ["metrics.jsonl", "evals.csv", "metrics.csv"])
def test_a_torn_last_line_is_dropped_with_a_warning_and_the_run_resumes(
    xor, done, tmp_path, capsys, name
):
    run = _copy(done, tmp_path)
    data = (run / name).read_bytes()
    (run / name).write_bytes(data + data.splitlines(keepends=True)[-1][:7])  # a cut-off write
    _train(xor, tmp_path, "run", steps=30, resume=True)
    err = capsys.readouterr().err
    assert "warning" in err and str(run / name) in err
    _assert_same(run, done / "run30")


@pytest.mark.parametrize("name", ["metrics.jsonl", "evals.csv", "metrics.csv"])
def test_a_garbage_line_names_the_file_and_line(xor, done, tmp_path, name):
    run = _copy(done, tmp_path)
    lines = (run / name).read_text().splitlines(keepends=True)
    lines.insert(2, "garbage,,,\n")
    (run / name).write_text("".join(lines))
    before = _snapshot(run)
    with pytest.raises(ValueError, match="line 3") as err:
        _train(xor, tmp_path, "run", steps=30, resume=True)
    assert str(run / name) in str(err.value)
    assert _snapshot(run) == before


@pytest.mark.parametrize("episodes", [0, -3])
def test_eval_episodes_below_1_is_refused(done, tmp_path, episodes):
    run = _copy(done, tmp_path)
    with pytest.raises(ValueError, match="--episodes must be >= 1"):
        evaluate_run(run, episodes=episodes)
    assert not (run / "eval.json").exists()


# -- 4. a task macflow cannot run -----------------------------------------------------------------


def test_a_task_macflow_cannot_run_says_once_why_there_is_no_evaluation(tmp_path, capsys):
    save(builders.dataset(True), tmp_path / "hand")
    result = _train(tmp_path / "hand", tmp_path, "r", spec=builders.spec(True))
    assert result.final is None
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "no evaluation" in ln]
    assert len(lines) == 1 and "test/hand" in lines[0]


# -- 5. eval of what is not a run -----------------------------------------------------------------


@pytest.mark.parametrize("what", ["nothing", "a dataset", "a file", "an empty directory"])
def test_eval_of_what_is_not_a_run_names_the_path(xor, tmp_path, what):
    path = {
        "nothing": tmp_path / "nowhere",
        "a dataset": xor,
        "a file": xor / "meta.json",
        "an empty directory": tmp_path / "empty",
    }[what]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError) as err:
        evaluate_run(path)
    assert str(path) in str(err.value)
    with pytest.raises(ValueError):
        load_run(path)
