"""Conformance: every registered environment obeys the protocol of macflow.envs.base."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from macflow.envs import entry, make_env, registered
from macflow.envs.rollout import make_rollout
from macflow.spec import EnvSpec


def _param(env_id: str):
    # Each SMAX map compiles for several seconds; smax/3m stands for them in the quick suite.
    if env_id.startswith("smax/") and env_id != "smax/3m":
        return pytest.param(env_id, marks=pytest.mark.slow)
    return env_id


# host (MuJoCo) envs: test_mamujoco.py
IDS = [_param(e.env_id) for e in registered() if not e.host]


def random_actions(spec: EnvSpec, key, ts):
    if spec.discrete:
        logits = jnp.where(ts.legal_actions, 0.0, -jnp.inf)
        return jax.random.categorical(key, logits).astype(jnp.int32)
    low, high = jnp.array(spec.action_low), jnp.array(spec.action_high)
    return jax.random.uniform(key, spec.action_shape, minval=low, maxval=high)


def _check_timestep(spec: EnvSpec, ts, first: bool):
    n = spec.num_agents
    assert ts.observations.shape == (n, spec.obs_dim) and ts.observations.dtype == jnp.float32
    assert ts.state.shape == (spec.state_dim,) and ts.state.dtype == jnp.float32
    assert np.all(np.isfinite(ts.observations)) and np.all(np.isfinite(ts.state))
    if spec.state_is_obs_concat:
        np.testing.assert_array_equal(ts.state, np.asarray(ts.observations).reshape(-1))
    if spec.discrete:
        assert ts.legal_actions.shape == (n, spec.action_dim) and ts.legal_actions.dtype == bool
        assert np.all(np.asarray(ts.legal_actions).any(axis=-1)), "an agent has no legal action"
    else:
        assert ts.legal_actions is None
    assert ts.reward.shape == () and ts.reward.dtype == jnp.float32 and np.isfinite(ts.reward)
    assert ts.terminal.shape == () and ts.terminal.dtype == bool
    assert ts.truncation.shape == () and ts.truncation.dtype == bool
    assert not (ts.terminal and ts.truncation)
    if first:
        assert ts.reward == 0 and not ts.terminal and not ts.truncation
    for value in jax.tree.leaves(ts.info):
        assert value.shape == ()


@pytest.mark.parametrize("env_id", IDS)
def test_protocol_shapes_dtypes_masks_and_termination(env_id):
    env = make_env(env_id)
    spec = env.spec
    assert spec.env_id == env_id
    reset, step = jax.jit(env.reset), jax.jit(env.step)
    key = jax.random.PRNGKey(0)
    state, ts = reset(key)
    _check_timestep(spec, ts, first=True)
    steps = 0
    while steps < spec.episode_limit and not (ts.terminal or ts.truncation):
        key, k_act, k_step = jax.random.split(key, 3)
        state, ts = step(k_step, state, random_actions(spec, k_act, ts))
        steps += 1
        _check_timestep(spec, ts, first=False)
    assert ts.terminal or ts.truncation, "the episode must end by the episode limit"
    if steps == spec.episode_limit and not ts.terminal:
        assert ts.truncation, "reaching the limit without a terminal is a truncation"
    else:
        assert not ts.truncation, "a truncation before the limit"


@pytest.mark.parametrize("env_id", IDS)
def test_rollouts_are_deterministic_under_a_fixed_key_and_vmap(env_id):
    env = make_env(env_id)
    spec = env.spec

    def act(params, key, pstate, env_state, ts):
        return random_actions(spec, key, ts), pstate

    run = make_rollout(env, lambda p, k, s, t: (), act, num_episodes=8)
    a, b = run(jax.random.PRNGKey(1)), run(jax.random.PRNGKey(1))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    c = run(jax.random.PRNGKey(2))
    assert not np.array_equal(a["steps"]["actions"], c["steps"]["actions"])
    assert np.all(a["ended"])
    valid = np.asarray(a["steps"]["valid"])
    rewards = np.where(valid, a["steps"]["rewards"], 0).sum(axis=1)
    np.testing.assert_allclose(a["returns"], rewards, rtol=1e-5)
    assert a["steps"]["observations"].shape == (
        8,
        spec.episode_limit,
        *(spec.num_agents,),
        spec.obs_dim,
    )


@pytest.mark.parametrize("env_id", IDS)
def test_registry_entry_is_complete(env_id):
    e = entry(env_id)
    cls = e.env_cls()
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
    assert cls.host is False
    for f in dataclasses.fields(cls):
        assert f.default is not dataclasses.MISSING, f"{env_id}.{f.name} needs a default"
    if e.behaviour is None:  # real tasks: data come from a trained behaviour policy
        trainer = e.trainer_cls()
        assert dataclasses.is_dataclass(trainer) and trainer.__dataclass_params__.frozen
        # `macflow collect` merges task, trainer and collect options into one namespace.
        names = [f.name for f in dataclasses.fields(cls)] + [
            f.name for f in dataclasses.fields(trainer)
        ]
        clash = {"out", "quality", "transitions", "episodes", "quick", "seed", "overwrite"}
        assert len(names) == len(set(names)) and not clash & set(names)
        return
    behaviour = e.behaviour_cls()
    assert behaviour.name
    # The CLI merges task, behaviour and collect options into one namespace.
    names = [f.name for f in dataclasses.fields(cls)] + [
        f.name for f in dataclasses.fields(behaviour)
    ]
    clash = {"out", "episodes", "seed", "quality", "overwrite"}
    assert len(names) == len(set(names)) and not clash & set(names)


def test_make_env_errors_name_the_fix():
    with pytest.raises(KeyError, match="Did you mean toy/coordination"):
        make_env("toy/coordinaton")
    with pytest.raises(TypeError, match=r"parameters are \['num_agents'"):
        make_env("toy/landmarks", agents=4)
    with pytest.raises(ValueError, match="zeta must lie in"):
        make_env("toy/intensity", zeta=1.5)
    assert make_env("toy/landmarks", num_agents=40).spec.obs_dim == 160


@pytest.mark.parametrize("env_id,module", [("mpe/spread", "mpe"), ("smax/3m", "smax")])
def test_missing_jaxmarl_extra_names_the_fix(env_id, module, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "jaxmarl", None)
    monkeypatch.delitem(sys.modules, f"macflow.envs.{module}", raising=False)
    with pytest.raises(
        ImportError, match=r"needs the 'jaxmarl' extra: pip install -e '\.\[jaxmarl\]'"
    ):
        make_env(env_id)
