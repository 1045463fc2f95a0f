"""Offline-to-online fine-tuning (``macflow finetune``): the online buffer's layout, the batch
mix, a killed and resumed fine-tuning against an uninterrupted one, bad input, and learning the
optimum the data lack."""

import csv
import json
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from macflow.agents import get_agent
from macflow.data import Sampler
from macflow.data.collect import collect
from macflow.envs import entry
from macflow.loop import create_agents, seed_keys
from macflow.online import OnlineBuffer
from macflow.online_loop import Plan, make_chunk, mixed_batch, start_all
from macflow.spec import TimeStep

from test_cli import MACFLOW, run

NETS = ["--agent.teacher-hidden", "32", "32", "--agent.student-hidden", "32", "32"]
NETS += ["--agent.critic-hidden", "32", "32", "--agent.teacher-steps", "1000"]
FT = ["--envs", "16", "--log-every", "512", "--checkpoint-every", "512", "--eval-episodes", "32"]


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """MAC-Flow trained offline on toy/coordination data that never hold the optimum (1,1)."""
    root = tmp_path_factory.mktemp("finetune")
    data = root / "data"
    run("collect", "toy/coordination", "--out", str(data), "--rare", "0", "--episodes", "2000")
    run(
        "train", "--dataset", str(data), "--algo", "macflow", "--seeds", "0", "1", "2",
        "--steps", "1000", "--log-every", "500", "--eval-every", "0", "--checkpoint-every", "0",
        "--eval-episodes", "32", "--final-eval-factor", "1", *NETS, "--out", str(root),
        "--name", "r", "--no-progress",
    )  # fmt: skip
    return root / "r"


def _modes(path):
    final = json.loads(path.read_text())
    return {m: [r["return_mean"] for r in rows] for m, rows in final["modes"].items()}


def test_finetuning_finds_the_joint_optimum_the_data_lack(offline):
    # Offline, the greedy students play (0,1) or (1,0): every data action pays 1, none pays 2.
    assert _modes(offline / "final.json")["zero"] == [1.0, 1.0, 1.0]
    run("finetune", str(offline), "--env-steps", "2048", *FT, "--eval-every", "1024")
    # Online, sampled noise tries (1,1) and the critic pulls the students to it.
    assert _modes(offline / "finetune" / "final.json")["zero"] == [2.0, 2.0, 2.0]
    with open(offline / "finetune" / "evals.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows if r["mode"] == "zero"] == ["0"] * 3 + ["1024"] * 3 + [
        "2048"
    ] * 3


def _ckpt_and_logs(path):
    with open(path / "evals.csv") as f:
        evals = [{k: v for k, v in r.items() if k != "train_seconds"} for r in csv.DictReader(f)]
    return (
        (path / "checkpoints" / "online.msgpack").read_bytes(),
        (path / "metrics.csv").read_text(),
        evals,
        json.loads((path / "marl_eval.json").read_text()),
    )


def test_a_killed_finetuning_resumes_to_the_uninterrupted_ones_files(offline):
    args = ["--env-steps", "3072", *FT, "--eval-every", "1024"]
    run("finetune", str(offline), *args, "--name", "whole")
    proc = subprocess.Popen(
        [*MACFLOW, "finetune", str(offline), *args, "--name", "cut", "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    clock = offline / "cut" / "checkpoints" / "online.json"
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if clock.exists() and 0 < json.loads(clock.read_text() or "{}").get("step", 0) < 3072:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (offline / "cut" / "final.json").exists(), "killed too late: raise --env-steps"
    run("finetune", str(offline), *args, "--name", "cut", "--resume")
    a, b = _ckpt_and_logs(offline / "whole"), _ckpt_and_logs(offline / "cut")
    assert a[0] == b[0], "checkpoints differ"
    assert a[1:] == b[1:]
    assert not [p for p in (offline / "cut").rglob(".*")], "temporary files left"


def test_bad_input_is_one_line_with_exit_2(offline, tmp_path):
    out = run("finetune", str(offline), "--env-steps", "0", ok=False)
    assert out.returncode == 2 and "--env-steps must be >= 1" in out.stderr
    out = run("finetune", str(tmp_path), ok=False)
    assert out.returncode == 2 and "config.json" in out.stderr
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((offline / "config.json").read_text())
    out = run("finetune", str(bare), ok=False)
    assert out.returncode == 2 and "latest.msgpack" in out.stderr, out.stderr
    record = json.loads((offline / "config.json").read_text())
    record["dataset"]["env_id"] = "elsewhere/task"
    (bare / "config.json").write_text(json.dumps(record))
    (bare / "checkpoints").mkdir()
    (bare / "checkpoints" / "latest.msgpack").write_bytes(
        (offline / "checkpoints" / "latest.msgpack").read_bytes()
    )
    out = run("finetune", str(bare), ok=False)
    assert out.returncode == 2 and "elsewhere/task" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


@pytest.fixture(scope="module")
def landmarks():
    """Tiny BC agents, a dataset and the chunk program on toy/landmarks (multi-step episodes
    that end by truncation)."""
    e = entry("toy/landmarks")
    env = e.env_cls()()
    ds = collect(env, e.behaviour_cls()(), 20)
    cls = get_agent("bc")
    config = cls.Config(hidden=(8,))
    agents = create_agents(cls, env.spec, config, [0, 1])
    plan = Plan(cls.stages(config, 1)[-1].name, 16, 8, 1)
    return env, Sampler.from_dataset(ds), agents, plan


def test_the_buffer_never_pairs_episodes_and_bootstraps_after_truncations(landmarks):
    env, sampler, agents, plan = landmarks
    envs, steps = 3, 3 * env.spec.episode_limit + 2
    keys = seed_keys([0, 1])
    carries = start_all(env, agents, keys, envs, 1000)
    carries, *_ = make_chunk(env, plan)(carries, sampler, keys, 0, steps)
    buf = jax.tree.map(lambda x: np.asarray(x[0]), carries.buffer)
    n = int(buf.size)
    assert n == envs * steps
    done = buf.terminals[:n] | buf.truncations[:n]
    assert done.sum() == envs * (steps // env.spec.episode_limit)  # each episode ends once
    assert not (buf.terminals & buf.truncations).any()
    # Row r's next observation is the same environment's next row unless the episode ended
    # there: then it is the episode's final observation, never the next episode's first.
    same = np.all(buf.next_observations[: n - envs] == buf.observations[envs:n], axis=(1, 2))
    np.testing.assert_array_equal(same, ~done[: n - envs])
    batch = jax.tree.map(lambda x: x[0], carries.buffer).gather(jnp.arange(n))
    np.testing.assert_array_equal(np.asarray(batch.bootstrap), 1.0 - buf.terminals[:n])


def test_a_terminal_step_is_not_bootstrapped_and_a_truncated_one_is():
    spec = entry("toy/landmarks").env_cls()().spec
    buf = OnlineBuffer.empty(spec, 4)
    n, o, s = spec.num_agents, spec.obs_dim, spec.state_dim

    def ts(value, terminal, truncation):
        return TimeStep(
            jnp.full((2, n, o), value), jnp.full((2, s), value), None, jnp.ones(2),
            jnp.array(terminal), jnp.array(truncation),
        )  # fmt: skip

    acts = jnp.zeros((2, n, spec.action_dim))
    buf = buf.add(
        ts(0.0, [False, False], [False, False]), acts, ts(1.0, [True, False], [True, True])
    )
    b = buf.gather(jnp.arange(2))
    np.testing.assert_array_equal(np.asarray(b.bootstrap), [0.0, 1.0])
    np.testing.assert_array_equal(np.asarray(b.truncations), [False, True])  # terminal wins
    np.testing.assert_array_equal(np.asarray(b.next_observations[:, 0, 0]), [1.0, 1.0])
    buf = buf.add(ts(2.0, [False] * 2, [False] * 2), acts, ts(3.0, [False] * 2, [False] * 2))
    buf = buf.add(ts(4.0, [False] * 2, [False] * 2), acts, ts(5.0, [False] * 2, [False] * 2))
    assert int(buf.size) == 4 and int(buf.cursor) == 2  # the oldest two rows were replaced
    np.testing.assert_array_equal(np.asarray(buf.observations[:, 0, 0]), [4.0, 4.0, 2.0, 2.0])


@pytest.mark.parametrize("ratio", [0.25, 0.5, 1.0])
def test_the_online_share_of_each_batch_is_r(landmarks, ratio):
    env, sampler, agents, plan = landmarks
    buffer = OnlineBuffer.empty(env.spec, 8).replace(size=jnp.int32(8))
    plan = plan._replace(batch_size=64, online=round(ratio * 64))
    shares = [
        float(
            np.mean(
                np.asarray(mixed_batch(sampler, buffer, jax.random.PRNGKey(i), plan).index) == -1
            )
        )
        for i in range(5)
    ]
    assert shares == [ratio] * 5  # exactly: the split is fixed, the rows within each part drawn
