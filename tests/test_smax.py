"""SMAX specifics beyond the conformance tests: battle outcomes, terminal vs truncation at the time
limit, stable dtypes under ``lax.scan`` and the SMACv2-style randomisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from macflow.envs import make_env
from macflow.envs.rollout import make_rollout
from macflow.envs.smax import NUM_MOVES, RACES


class Runner:
    """A task with its jitted reset/step (compiled once per test module)."""

    def __init__(self, env_id: str, **kwargs):
        self.env = make_env(env_id, **kwargs)
        self.reset, self.step = jax.jit(self.env.reset), jax.jit(self.env.step)

    def episode(self, policy, seed: int):
        """Runs ``policy(ts) -> actions`` to the end; returns steps, return, last state and ts."""
        key = jax.random.PRNGKey(seed)
        key, k = jax.random.split(key)
        state, ts = self.reset(k)
        steps, ret, wins = 0, 0.0, 0
        while not (ts.terminal or ts.truncation):
            key, k = jax.random.split(key)
            state, ts = self.step(k, state, policy(ts))
            steps, ret, wins = steps + 1, ret + float(ts.reward), wins + int(ts.info["won"])
        return steps, ret, wins, state, ts


def attack(ts):
    """Advance east (towards the enemy's side) until an enemy is in range, then fire at the first
    one in range; dead allies stop."""
    legal = np.asarray(ts.legal_actions)
    in_range = legal[:, NUM_MOVES:]
    fire = NUM_MOVES + in_range.argmax(axis=1)
    return jnp.asarray(np.where(in_range.any(axis=1), fire, np.where(legal[:, 1], 1, 4)), jnp.int32)


def noop(ts):
    return jnp.full(ts.legal_actions.shape[:1], 4, jnp.int32)


SEED = 2  # attack wins this 3m battle (at step 12); it loses some others


@pytest.fixture(scope="module")
def m3():
    return Runner("smax/3m")


def test_attacking_allies_win_and_idle_allies_lose(m3):
    steps, ret, wins, state, ts = m3.episode(attack, SEED)
    assert steps < m3.env.spec.episode_limit
    assert ts.terminal and not ts.truncation and ts.info["won"] and wins == 1
    assert not np.asarray(state.state.unit_alive[3:]).any()
    # Damage shaping sums to 1 over a full kill, plus the win bonus of 1: the maximum return.
    np.testing.assert_allclose(ret, 2.0, atol=1e-5)

    steps, ret, wins, state, ts = m3.episode(noop, SEED)
    assert steps < m3.env.spec.episode_limit
    assert ts.terminal and not ts.truncation and not ts.info["won"] and wins == 0
    assert not np.asarray(state.state.unit_alive[:3]).any()
    assert ret == 0.0  # the allies never fired


def test_time_limit_is_a_truncation_unless_the_battle_ends_on_it(m3):
    won_at = m3.episode(attack, SEED)[0]
    # The same battle (same keys and actions) cut one step before its end is a truncation.
    steps, _, wins, _, ts = Runner("smax/3m", episode_limit=won_at - 1).episode(attack, SEED)
    assert steps == won_at - 1
    assert ts.truncation and not ts.terminal and not ts.info["won"] and wins == 0
    # Ending on the limit step itself: the battle outcome wins, a terminal.
    steps, _, wins, _, ts = Runner("smax/3m", episode_limit=won_at).episode(attack, SEED)
    assert steps == won_at and ts.terminal and not ts.truncation and ts.info["won"]


def _types(tree):
    return jax.tree.map(lambda x: (x.shape, x.dtype, jax.typeof(x).weak_type), tree)


def test_reset_and_step_share_dtypes_and_weak_types(m3):
    state, ts = m3.reset(jax.random.PRNGKey(0))
    after = m3.step(jax.random.PRNGKey(1), state, noop(ts))
    assert jax.tree.structure(after) == jax.tree.structure((state, ts))
    assert _types(after) == _types((state, ts))
    assert not any(jax.typeof(x).weak_type for x in jax.tree.leaves((state, ts)))
    # So a jitted step fed first a reset state, then its own output, compiles once (with
    # JaxMARL's weakly typed reset state it compiles twice).
    m3.step(jax.random.PRNGKey(2), *after[:1], noop(ts))
    assert m3.step._cache_size() == 1


def _random_rollout(env, traces):
    def act(params, key, pstate, env_state, ts):
        traces.append(1)  # Python runs only while tracing
        logits = jnp.where(ts.legal_actions, params, -jnp.inf)
        return jax.random.categorical(key, logits).astype(jnp.int32), pstate

    return make_rollout(env, lambda p, k, s, t: (), act, num_episodes=2, record=False)


def test_rollout_traces_the_step_once():
    traces = []
    _random_rollout(make_env("smax/3m"), traces).trace(jax.random.PRNGKey(0), jnp.float32(0.0))
    assert len(traces) == 1


@pytest.mark.slow  # compiling the whole rollout takes 15-30 s
def test_rollout_compiles_once():
    traces = []
    run = _random_rollout(make_env("smax/3m"), traces)
    first = run(jax.random.PRNGKey(0), jnp.float32(0.0))
    second = run(jax.random.PRNGKey(1), jnp.float32(1.0))
    assert len(traces) == 1 and run._cache_size() == 1
    assert np.all(first["ended"]) and np.all(second["ended"])


@pytest.mark.parametrize(
    "env_id, race",
    [
        ("smax/terran_5_vs_5", "terran"),
        pytest.param("smax/zerg_5_vs_5", "zerg", marks=pytest.mark.slow),
        pytest.param("smax/protoss_5_vs_5", "protoss", marks=pytest.mark.slow),
        pytest.param("smax/terran_10_vs_10", "terran", marks=pytest.mark.slow),
    ],
)
def test_smacv2_tasks_randomise_unit_types_and_positions(env_id, race):
    env = make_env(env_id)
    n = env.spec.num_agents
    state, ts = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(0), 64))
    types = np.asarray(state.state.unit_types)
    names = [env.jaxmarl.unit_type_names[t] for t in np.unique(types)]
    assert sorted(names) == sorted(RACES[race][0])  # both race units appear, nothing else
    assert len({tuple(row) for row in types[:, :n]}) > 8  # many team compositions
    np.testing.assert_array_equal(types[:, n:], types[:, :n])  # enemies mirror the allies
    pos = np.asarray(state.state.unit_positions)
    assert pos.std(axis=0).min() > 1.0  # every unit's start varies across resets
    # The type shows in the observation (the agent's own one-hot unit type, last 6 features).
    own = np.asarray(ts.observations)[:, :, -6:].argmax(-1)
    np.testing.assert_array_equal(own, types[:, :n])


def test_fixed_maps_keep_their_units(m3):
    for seed in range(4):
        state, _ = m3.reset(jax.random.PRNGKey(seed))
        assert not np.asarray(state.state.unit_types).any()  # marines only


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="attack_mode"):
        make_env("smax/3m", attack_mode="weakest")
    with pytest.raises(ValueError, match="episode_limit"):
        make_env("smax/3m", episode_limit=0)
