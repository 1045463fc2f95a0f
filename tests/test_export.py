"""`macflow export`: the exported students (ONNX in onnxruntime, numpy in macflow/deploy.py) act
as the agents do in JAX, for the same observations, masks and random draws."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import onnxruntime
import pytest

from macflow import deploy
from macflow.agents import get_agent
from macflow.api import main
from macflow.data import save
from macflow.data.collect import collect
from macflow.envs import make_env
from macflow.envs.toys import XorData
from macflow.export import exported, onnx_policy
from macflow.spec import EnvSpec
from macflow.train import TrainConfig, load_run, train

N, O = 3, 5  # noqa: E741


def spec(discrete: bool) -> EnvSpec:
    if discrete:
        return EnvSpec("test/export", N, O, 4, 4, True, 10)
    box = {"action_low": (-1.0, -2.0), "action_high": (1.0, 3.0)}
    return EnvSpec("test/export", N, O, 4, 2, False, 10, **box)


def build(algo: str, discrete: bool, **config):
    cls = get_agent(algo)
    # One compiled program: eagerly, every initialiser op would compile on its own (seconds).
    create = jax.jit(cls.create, static_argnums=(1, 2))
    return create(jax.random.PRNGKey(0), spec(discrete), cls.Config(**config))


def runtimes(agent):
    """``(spec.json, weights, onnxruntime session)`` of an agent's exported policy."""
    s, w = exported(agent.export_policy(), agent.spec)
    return s, w, onnxruntime.InferenceSession(onnx_policy(s, w))


def inputs(s, obs, ids, draws, legal):
    """The exported graph's inputs: observations, agent ids and the draws it reads."""
    names = {i["name"] for i in s["inputs"]}
    feed = {"observation": np.asarray(obs, np.float32), "agent_id": np.asarray(ids, np.int64)}
    feed |= {k: np.asarray(v, np.float32) for k, v in draws.items() if k in names}
    if "legal" in names:
        feed["legal"] = np.asarray(legal, bool)
    return feed


def random_legal(rng, shape):
    legal = rng.random(shape) < 0.6
    legal[..., 0] = True  # never an empty mask
    return legal


def check(got, want, discrete):
    if discrete:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


STUDENTS = {"student_hidden": (32, 32), "teacher_hidden": (8,), "critic_hidden": (8,)}
TRIALS = 4


@pytest.mark.parametrize("shared", [False, True], ids=["own-noise", "shared-noise"])
@pytest.mark.parametrize("discrete", [False, True], ids=["continuous", "discrete"])
def test_exported_student_equals_act_agent(discrete, shared):
    # act_agent reads the students' weights only: an agent of those alone (as deployed, and
    # much cheaper to compile than the whole agent's creation).
    MACFlow = get_agent("macflow")
    config = MACFlow.Config(shared_noise=shared, **STUDENTS)
    agent = MACFlow(
        rng=None, cache_key=None, params={}, target={}, opt={}, config=config, spec=spec(discrete)
    )
    z = jnp.zeros((1, N, agent.spec.action_dim))
    joint = z.reshape(1, -1) if shared else None
    init = jax.jit(agent._student().init)
    student = init(jax.random.PRNGKey(0), jnp.zeros((1, N, O)), jnp.zeros((1, N, N)), z, joint)
    agent = agent.replace(params={"student": student})
    s, w, session = runtimes(agent)
    d = agent.spec.action_dim
    rng = np.random.default_rng(0)
    seen = set()
    for mode, agents in (("sample", range(N)), ("zero", [N - 1])):
        for i in agents:

            def one(key, obs, legal, i=i, mode=mode):
                """act_agent, and its draws from its key: the team's noise [1, N, D] (this
                agent's row, or all of it with shared noise) and the Gumbel [1, N, A] of its
                categorical draw (fold 1)."""
                team = jax.random.normal(key, (1, N, d))[0]
                gumbel = jax.random.gumbel(jax.random.fold_in(key, 1), (1, N, d))[0, i]
                if mode == "zero":
                    team, gumbel = jnp.zeros_like(team), jnp.zeros_like(gumbel)
                noise = team.reshape(-1) if shared else team[i]
                return agent.act_agent(key, i, obs, legal, mode), noise, gumbel

            keys = jax.random.split(jax.random.PRNGKey(i), TRIALS)
            obs = rng.standard_normal((TRIALS, O)).astype(np.float32) * 2
            legal = random_legal(rng, (TRIALS, d)) if discrete else None
            want, noise, gumbel = map(np.asarray, jax.jit(jax.vmap(one))(keys, obs, legal))
            feed = inputs(s, obs, [i] * TRIALS, {"noise": noise, "gumbel": gumbel}, legal)
            check(session.run(None, feed)[0], want, discrete)
            check(deploy.forward(s, w, **feed), want, discrete)
            seen |= {json.dumps(a) for a in want.tolist()}
    assert len(seen) > 3, "the test needs varied actions"


# How each algorithm's `act` draws its randomness from its key, for a team of shape [B, N, D].
def macflow_draws(key, shape):
    gumbel = jax.random.gumbel(jax.random.fold_in(key, 1), shape)
    return {"noise": jax.random.normal(key, shape), "gumbel": gumbel}


def baseline_draws(key, shape):
    return {"action_noise": jax.random.normal(key, shape), "gumbel": jax.random.gumbel(key, shape)}


DRAWS = {"macflow": macflow_draws, "flow-bc": macflow_draws}
DRAWS |= dict.fromkeys(("bc", "matd3bc", "omiga", "icq"), baseline_draws)
CASES = [
    ("macflow", False, STUDENTS | {"shared_noise": True}),
    ("flow-bc", True, STUDENTS),
    ("bc", False, {"hidden": (16, 16), "layer_norm": True}),
    ("bc", True, {"hidden": (16, 16)}),
    ("matd3bc", False, {"actor_hidden": (16, 16), "critic_hidden": (8,)}),
    ("matd3bc", True, {"actor_hidden": (16, 16), "critic_hidden": (8,)}),
    ("omiga", False, {"hidden": (16, 16)}),
    ("omiga", True, {"hidden": (16, 16)}),
    ("icq", True, {"actor_hidden": (16, 16), "critic_hidden": (8,)}),
]


@pytest.mark.parametrize(
    ("algo", "discrete", "config"), CASES, ids=[f"{a}-{'d' if d else 'c'}" for a, d, _ in CASES]
)
def test_every_decentralised_algorithm_exports_its_team_act(algo, discrete, config):
    agent = build(algo, discrete, **config)
    s, w, session = runtimes(agent)
    b, d = 4, agent.spec.action_dim
    rng = np.random.default_rng(1)
    obs = rng.standard_normal((b, N, O)).astype(np.float32) * 2
    legal = random_legal(rng, (b, N, d)) if discrete else None
    key = jax.random.PRNGKey(9)
    draws = jax.jit(DRAWS[algo], static_argnums=1)(key, (b, N, d))
    for mode in ("sample", "zero"):
        want = np.asarray(agent.act(key, obs, legal, mode))
        want = want.reshape(b * N, *want.shape[2:])
        feed = {k: np.asarray(v) * (mode == "sample") for k, v in draws.items()}
        if s["network"]["joint"]:  # every agent of an environment reads its whole team's noise
            feed["noise"] = np.repeat(feed["noise"].reshape(b, 1, -1), N, axis=1)
        feed = {k: v.reshape(b * N, -1) for k, v in feed.items()}
        feed = inputs(s, obs.reshape(b * N, O), np.tile(np.arange(N), b), feed,
                      None if legal is None else legal.reshape(b * N, d))  # fmt: skip
        check(session.run(None, feed)[0], want, discrete)
        check(deploy.forward(s, w, **feed), want, discrete)


@pytest.fixture(scope="module")
def xor_run(tmp_path_factory):
    """A real (tiny) MAC-Flow run on toy/xor with two seeds, shared noise."""
    root = tmp_path_factory.mktemp("export")
    save(collect(make_env("toy/xor"), XorData(), 200, chunk=200), root / "xor")
    MACFlow = get_agent("macflow")
    # One stage (simultaneous): one update program to compile.
    config = MACFlow.Config(**STUDENTS, schedule="simultaneous", shared_noise=True)
    cfg = TrainConfig(
        dataset=root / "xor", steps=2, batch_size=16, seeds=(0, 1), log_every=2, eval_every=0,
        checkpoint_every=0, eval_episodes=2, final_eval_factor=1, out=root, name="run",
        progress=False,
    )  # fmt: skip
    return train(cfg, config).path


def fails(capsys, *args) -> str:
    with pytest.raises(SystemExit) as exit:
        main(list(args))
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err, err
    return err


def test_export_command_writes_the_three_files_deploy_py_alone_acts(xor_run, tmp_path, capsys):
    out = tmp_path / "policy"
    main(["export", str(xor_run), "--out", str(out), "--seed", "1"])
    printed = capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"policy.onnx", "policy.npz", "spec.json"}
    assert "policy.onnx" in printed and "bytes" in printed
    s = json.loads((out / "spec.json").read_text())
    record = json.loads((xor_run / "config.json").read_text())
    assert (s["task"], s["num_agents"], s["obs_dim"], s["seed"]) == ("toy/xor", 2, 1, 1)
    assert s["dataset_checksum"] == record["dataset"]["checksum"]
    assert s["action"] == {"kind": "continuous", "dim": 1, "low": [-1.0], "high": [1.0]}
    noise = next(i for i in s["inputs"] if i["name"] == "noise")
    assert noise["shape"] == ["batch", 2] and noise["draw"] == {
        "sample": "standard normal",
        "zero": "zeros",
    }
    # The same export again is the same bytes (no time stamps); the npz alone skips the graph.
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    main(["export", str(xor_run), "--out", str(out), "--seed", "1"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    main(["export", str(xor_run), "--out", str(tmp_path / "npz"), "--format", "npz"])
    assert {p.name for p in (tmp_path / "npz").iterdir()} == {"policy.npz", "spec.json"}

    # deploy.py copied alone beside the files, in a Python that never imports JAX.
    shutil.copy(deploy.__file__, out / "deploy.py")
    obs = np.array([[0.3], [-1.2]], np.float32)
    code = (
        "import sys, json, numpy as np; import deploy\n"
        "p = deploy.Policy('.'); obs = np.array(json.loads(sys.argv[1]), np.float32)\n"
        "zero = p.act(obs, [0, 1]); one = p.act(obs[0], 1, rng=np.random.default_rng(3))\n"
        "assert 'jax' not in sys.modules and 'macflow' not in sys.modules, sorted(sys.modules)\n"
        "print(json.dumps([zero.tolist(), one.tolist()]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(obs.tolist())],
        cwd=out, capture_output=True, text=True, check=True,
    )  # fmt: skip
    zero, one = json.loads(result.stdout)
    # The same decisions from the checkpoint in JAX: zero noise, and the noise rng drew.
    agent = jax.tree.map(lambda x: x[1], load_run(xor_run).agents)
    for i in range(2):
        want = agent.act_agent(jax.random.PRNGKey(0), i, jnp.asarray(obs[i]), None, "zero")
        np.testing.assert_allclose(zero[i], np.asarray(want), atol=1e-5)
    z = np.random.default_rng(3).normal(size=(1, 2)).astype(np.float32)
    student = agent._student().apply(
        agent.params["student"], obs[0], jax.nn.one_hot(1, 2), z[0, 1:], z[0]
    )
    np.testing.assert_allclose(one, np.tanh(np.asarray(student)), atol=1e-5)


def test_export_refuses_bad_input_in_one_line(xor_run, tmp_path, capsys):
    out = str(tmp_path / "out")
    err = fails(capsys, "export", str(xor_run), "--out", out, "--seed", "7")
    assert "--seed 7" in err and "[0, 1]" in err
    err = fails(capsys, "export", str(xor_run), "--out", out, "--format", "onnx,tflite")
    assert "--format" in err and "'tflite'" in err
    err = fails(capsys, "export", str(tmp_path / "nowhere"), "--out", out)
    assert "does not exist" in err
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(xor_run / "config.json", bare / "config.json")
    err = fails(capsys, "export", str(bare), "--out", out)
    assert "latest.msgpack is missing" in err
    record = json.loads((xor_run / "config.json").read_text())
    (bare / "config.json").write_text(json.dumps(record | {"algo": "diffusion"}))
    err = fails(capsys, "export", str(bare), "--out", out)
    assert "config.json: diffusion cannot be exported" in err and "centralised" in err
    assert not Path(out).exists()  # nothing written by a refused export
