"""Multi-agent MuJoCo: host-environment conformance, parallel host rollouts, the TD3 trainer and
the datasets of every quality level it generates."""

import dataclasses
import json
import signal

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from macflow.data import save
from macflow.data.collect import collect
from macflow.envs import entry, make_env, registered
from macflow.envs.host import HostPool, host_rollout, reset_keys
from macflow.evaluate import evaluate
from macflow.trainers import td3 as td3_module
from macflow.trainers.qualities import CONTINUOUS, Curve
from macflow.trainers.td3 import TD3, load_snapshot

IDS = [e.env_id for e in registered() if e.env_id.startswith("mamujoco/")]
FAST = "mamujoco/2halfcheetah"
SLOW = pytest.mark.slow


def _check_timestep(spec, ts, first: bool):
    n = spec.num_agents
    for name in ("observations", "state", "reward", "terminal", "truncation"):
        assert isinstance(getattr(ts, name), np.ndarray), f"{name} must be a numpy array"
    assert ts.observations.shape == (n, spec.obs_dim) and ts.observations.dtype == np.float32
    assert ts.state.shape == (spec.state_dim,) and ts.state.dtype == np.float32
    assert np.all(np.isfinite(ts.observations)) and np.all(np.isfinite(ts.state))
    assert ts.legal_actions is None
    assert ts.reward.shape == () and ts.reward.dtype == np.float32 and np.isfinite(ts.reward)
    assert ts.terminal.shape == () and ts.terminal.dtype == bool
    assert ts.truncation.shape == () and ts.truncation.dtype == bool
    assert not (ts.terminal and ts.truncation)
    if first:
        assert ts.reward == 0 and not ts.terminal and not ts.truncation


@pytest.mark.parametrize("env_id", [i if i == FAST else pytest.param(i, marks=SLOW) for i in IDS])
def test_protocol_shapes_dtypes_padding_and_termination(env_id):
    env = make_env(env_id)
    spec = env.spec
    assert spec.env_id == env_id and not spec.discrete and spec.episode_limit == 1000
    assert spec.action_low == (-1.0,) * spec.action_dim == tuple(-x for x in spec.action_high)
    gym = env._gym()
    sizes = [gym.observation_space(a).shape[0] for a in gym.possible_agents]
    rng = np.random.default_rng(0)
    _, ts = env.reset(jax.random.PRNGKey(0))
    _check_timestep(spec, ts, first=True)
    steps = 0
    while steps < spec.episode_limit and not (ts.terminal or ts.truncation):
        actions = rng.uniform(-1, 1, spec.action_shape).astype(np.float32)
        _, ts = env.step(None, None, actions)
        steps += 1
        _check_timestep(spec, ts, first=False)
        for i, size in enumerate(sizes):  # shorter observations are zero-padded
            assert not ts.observations[i, size:].any()
    assert ts.terminal or ts.truncation, "the episode must end by the episode limit"
    if steps == spec.episode_limit and not ts.terminal:
        assert ts.truncation, "reaching the limit without a terminal is a truncation"
    else:
        assert not ts.truncation, "a truncation before the limit"
    with pytest.raises(RuntimeError, match="call reset first"):
        env.step(None, None, np.zeros(spec.action_shape, np.float32))
    # The key seeds the initial state: same key, same start; another key, another start.
    a, b = env.reset(jax.random.PRNGKey(3))[1], env.reset(jax.random.PRNGKey(3))[1]
    np.testing.assert_array_equal(a.observations, b.observations)
    c = env.reset(jax.random.PRNGKey(4))[1]
    assert not np.array_equal(a.state, c.state)
    env.close()


def test_registry_entries_are_host_tasks_trained_by_td3():
    assert IDS == sorted(
        ["mamujoco/2halfcheetah", "mamujoco/6halfcheetah", "mamujoco/2ant", "mamujoco/3hopper"]
    )
    for env_id in IDS:
        e = entry(env_id)
        assert e.host and e.extra == "mamujoco" and e.behaviour is None and e.summary
        assert e.trainer_cls() is TD3
        cls = e.env_cls()
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
        assert cls.host is True
    env = make_env(FAST)
    env.reset(0)
    # The simulator is no field: equality, hashing and pickling ignore it.
    assert env == make_env(FAST) and hash(env) == hash(make_env(FAST))
    assert dataclasses.asdict(env) == {}
    assert "_env" not in env.__getstate__()


def test_missing_extra_names_the_fix(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gymnasium_robotics", None)
    monkeypatch.delitem(sys.modules, "macflow.envs.mamujoco", raising=False)
    with pytest.raises(ImportError, match=r"needs the 'mamujoco' extra: pip install"):
        make_env(FAST)


def _linear(params, key, ts):
    """A deterministic policy of the observations: the same actions on any process."""
    del key
    return jnp.tanh(jnp.einsum("...no,noa->...na", ts.observations, params))


def _sequential(env, params, keys):
    returns, lengths = [], []
    for k in keys:
        _, ts = env.reset(k)
        ret, steps = 0.0, 0
        while not (ts.terminal or ts.truncation):
            batched = jax.tree.map(lambda x: x[None], ts)
            _, ts = env.step(None, None, np.asarray(_linear(params, None, batched))[0])
            ret, steps = ret + float(ts.reward), steps + 1
        returns.append(ret)
        lengths.append(steps)
    return np.array(returns), np.array(lengths)


def test_host_rollout_matches_a_sequential_rollout_on_two_workers():
    # Hopper falls at different steps: episodes of different lengths.
    env = make_env("mamujoco/3hopper")
    spec = env.spec
    params = 0.05 * jax.random.normal(
        jax.random.PRNGKey(0), (spec.num_agents, spec.obs_dim, spec.action_dim)
    )
    key, episodes = jax.random.PRNGKey(7), 5
    with HostPool(env, workers=2) as pool:
        out = host_rollout(env, _linear, params, episodes, key, pool=pool)
        assert len(pool._procs) == 2 and pool._used() == [0, 1]  # both workers hold episodes
        again = host_rollout(env, _linear, params, episodes, key, record=False, pool=pool)
        procs = list(pool._procs)
    assert not any(p.is_alive() for p in procs), "workers must stop with the pool"
    returns, lengths = _sequential(env, params, reset_keys(key, episodes))
    np.testing.assert_allclose(out["returns"], returns, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(out["returns"], again["returns"])
    assert len(set(lengths.tolist())) > 1, "the test needs episodes of different lengths"
    assert np.all(out["ended"]) and out["final_info"] == {}
    steps, limit = out["steps"], spec.episode_limit
    assert set(steps) == {
        "observations",
        "state",
        "legal_actions",
        "actions",
        "rewards",
        "terminals",
        "truncations",
        "next_observations",
        "next_state",
        "next_legal_actions",
        "info",
        "valid",
    }
    assert steps["observations"].shape == (episodes, limit, spec.num_agents, spec.obs_dim)
    assert steps["actions"].shape == (episodes, limit, *spec.action_shape)
    np.testing.assert_array_equal(steps["valid"].sum(axis=1), lengths)
    valid = steps["valid"]
    np.testing.assert_allclose(np.where(valid, steps["rewards"], 0).sum(1), out["returns"], 1e-5)
    assert not steps["observations"][~valid].any(), "steps after an episode's end are zero"
    last = lengths - 1
    ends = steps["terminals"] | steps["truncations"]
    assert ends[np.arange(episodes), last].all() and ends.sum() == episodes
    # Each step's next observation is the following step's observation.
    e = 0
    np.testing.assert_array_equal(
        steps["next_observations"][e, : last[e]], steps["observations"][e, 1 : last[e] + 1]
    )


def test_pool_reports_worker_errors_and_shuts_down_on_keyboard_interrupt():
    env = make_env(FAST)
    with pytest.raises(KeyboardInterrupt):
        with HostPool(env, workers=2) as pool:
            procs = list(pool._procs)
            pool.reset(reset_keys(jax.random.PRNGKey(0), 2))
            with pytest.raises(RuntimeError, match=r"worker 0 failed:\n(.|\n)*reshape"):
                pool.step(np.zeros((2, 5), np.float32), np.ones(2, bool))  # wrong action shape
            raise KeyboardInterrupt
    assert not any(p.is_alive() for p in procs)


class _Linear(flax.struct.PyTreeNode):
    """A stand-in agent for evaluate: decentralised linear actions."""

    w: jax.Array

    def act(self, key, observations, legal, mode, states=None):
        return jnp.tanh(jnp.einsum("...no,noa->...na", observations, self.w))


@dataclasses.dataclass(frozen=True)
class _Zeros:
    """A scripted behaviour for collect: every agent does nothing."""

    name = "zeros"

    def init(self, env, key, env_state, ts):
        return ()

    def act(self, env, key, pstate, env_state, ts):
        return jnp.zeros(env.spec.action_shape, jnp.float32)


def test_evaluate_and_collect_dispatch_to_host_rollouts(tmp_path):
    env = make_env("mamujoco/3hopper")
    spec = env.spec
    w = jax.random.normal(jax.random.PRNGKey(1), (2, spec.num_agents, spec.obs_dim, 1))
    results = evaluate(env, _Linear(w=w), jax.random.PRNGKey(0), episodes=3)
    assert len(results) == 2 and all(len(r["returns"]) == 3 for r in results)
    assert results[0]["returns"] != results[1]["returns"]
    ds = collect(env, _Zeros(), num_episodes=3, seed=0, chunk=2)
    ds = save(ds, tmp_path / "zeros")
    assert ds.num_episodes == 3 and not np.asarray(ds.arrays["actions"]).any()
    assert np.asarray(ds.arrays["terminals"])[ds.ends].all()  # a motionless hopper falls


TINY = TD3(
    env_steps=4000,
    start_steps=1000,
    envs=2,
    hidden=(16, 16),
    batch_size=32,
    snapshot_every=1000,
    eval_episodes=2,
)


def test_td3_configs():
    assert TD3.name == "td3"
    quick = TD3.quick()
    assert isinstance(quick, TD3) and quick.env_steps < TD3().env_steps
    with pytest.raises(ValueError, match="multiple of policy_delay"):
        TD3(envs=3)


def _residual(cfg, spec, actor, obs, actions):
    mean = td3_module._nets(cfg, spec)[0].apply(actor, obs)
    return np.abs(np.asarray(mean) - actions)


def test_td3_fit_resumes_and_collects_every_quality(tmp_path, monkeypatch):
    monkeypatch.setenv("MACFLOW_CACHE", str(tmp_path / "cache"))
    env, cfg, directory = make_env(FAST), TINY, tmp_path / "td3"
    spec = env.spec

    # Ctrl-C during training: a checkpoint is saved and the error goes on.
    real = td3_module._Run.snapshot

    def interrupted(self, *args):
        real(self, *args)
        if len(self.snapshots) == 2:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(td3_module._Run, "snapshot", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cfg.fit(env, 0, directory, None)
    assert not (directory / "curve.json").exists()
    meta = json.loads(np.load(directory / "checkpoint.npz")["meta"].tobytes())
    assert 2000 <= meta["env_steps"] < cfg.env_steps and len(meta["snapshots"]) == 2
    monkeypatch.setattr(td3_module._Run, "snapshot", real)

    curve = cfg.fit(env, 0, directory, None)  # resumes
    assert [s.index for s in curve.snapshots] == [0, 1, 2, 3]
    assert [s.env_steps for s in curve.snapshots] == [1000, 2000, 3000, 4000]
    assert curve.snapshots[:2] == tuple(td3_module.Snapshot(**s) for s in meta["snapshots"]), (
        "snapshots before the interruption are kept"
    )
    assert np.isfinite(curve.random_return) and curve.random_std > 0
    assert Curve.from_json((directory / "curve.json").read_text()) == curve
    assert cfg.fit(env, 0, directory, None) == curve  # done: read back, no training

    with np.load(directory / "checkpoint.npz") as ck:
        buffer = {k: ck[k] for k in ck.files if k.startswith("buffer_")}
    medium, expert = curve.for_quality("medium"), curve.for_quality("expert")
    actors = {s.index: load_snapshot(cfg, spec, directory, s.index) for s in curve.snapshots}
    for quality in CONTINUOUS:
        ds = cfg.collect(env, directory, curve, quality, 1000, seed=1, console=None)
        ds = save(ds, tmp_path / quality)  # validates the schema
        arrays = {k: np.asarray(v) for k, v in ds.arrays.items()}
        assert ds.quality == quality
        assert ds.reference_returns == curve.reference_returns()
        prov = ds.provenance
        assert prov["method"] == "collect" and prov["behaviour"] == "td3" and prov["seed"] == 1
        assert prov["behaviour_config"] == dataclasses.asdict(cfg)
        # HalfCheetah never falls: whole 1000-step episodes, each cut by the time limit.
        assert ds.num_transitions % 1000 == 0 and ds.num_transitions >= 1000
        assert not arrays["terminals"].any() and arrays["truncations"][ds.ends].all()
        assert arrays["final_observations"].shape[0] == ds.num_episodes
        roles = [(s["role"], s["index"]) for s in prov["snapshots"]]
        if quality == "random":
            assert roles == [] and ds.num_episodes == 1
            assert 0.4 < np.abs(arrays["actions"]).mean() < 0.6  # uniform in [-1, 1]
        elif quality in ("expert", "medium"):
            snap = curve.for_quality(quality)
            assert roles == [(quality, snap.index)] and ds.num_episodes == 1
            res = _residual(
                cfg, spec, actors[snap.index], arrays["observations"], arrays["actions"]
            )
            assert res.max() < 0.6 and res.mean() < 0.1  # the snapshot's actor plus noise
        elif quality == "medium-expert":
            assert roles == [("medium", medium.index), ("expert", expert.index)]
            assert ds.num_episodes == 2  # one episode of each
            for e, snap in enumerate((medium, expert)):
                rows = slice(1000 * e, 1000 * (e + 1))
                obs, actions = arrays["observations"][rows], arrays["actions"][rows]
                res = _residual(cfg, spec, actors[snap.index], obs, actions)
                assert res.max() < 0.6 and res.mean() < 0.1
        else:  # medium-replay: a whole episode of the real replay buffer
            assert roles == [("medium", medium.index)] and "replay buffer" in prov["source"]
            assert ds.num_episodes == 1  # two episodes qualify; only one fits in 1000 rows
            first = np.flatnonzero(
                (buffer["buffer_obs"] == arrays["observations"][0]).all(axis=(1, 2))
            )
            assert len(first) == 1
            episode = buffer["buffer_episode"][first[0]]
            rows = np.flatnonzero(buffer["buffer_episode"] == episode)
            assert buffer["buffer_step"][rows[0]] < medium.env_steps
            transitions = rows[~buffer["buffer_final"][rows]]
            np.testing.assert_array_equal(buffer["buffer_action"][transitions], arrays["actions"])
            np.testing.assert_array_equal(
                buffer["buffer_obs"][rows[-1]], arrays["final_observations"][0]
            )

    # Sizes in episodes: medium-expert splits them, medium-replay holds what the buffer has.
    ds = cfg.collect(env, directory, curve, "medium-expert", None, 2, None, episodes=3)
    assert ds.num_episodes == 3 and ds.num_transitions == 3000
    assert [s["role"] for s in ds.provenance["snapshots"]] == ["medium", "expert"]
    ended = buffer["buffer_episode"][buffer["buffer_final"]]
    starts = [buffer["buffer_step"][buffer["buffer_episode"] == e].min() for e in ended]
    available = int(np.sum(np.array(starts) < medium.env_steps))
    ds = cfg.collect(env, directory, curve, "medium-replay", None, 2, None, episodes=10)
    assert ds.num_episodes == available >= 2
