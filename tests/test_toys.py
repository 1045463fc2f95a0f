"""The toy games' rewards and the statistics of their scripted datasets."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from macflow.data.collect import collect
from macflow.envs import make_env
from macflow.envs.landmarks import LandmarksData
from macflow.envs.toys import CoordinationData, IntensityData, XorData


def _payoff(env, actions):
    state, _ = env.reset(jax.random.PRNGKey(0))
    _, ts = env.step(jax.random.PRNGKey(0), state, actions)
    assert ts.terminal
    return float(ts.reward)


def test_coordination_payoff_table():
    env = make_env("toy/coordination")
    table = {(0, 0): 0.0, (0, 1): 1.0, (1, 0): 1.0, (1, 1): 2.0}
    for joint, reward in table.items():
        assert _payoff(env, jnp.array(joint, jnp.int32)) == reward


def test_xor_pays_when_signs_differ():
    env = make_env("toy/xor")
    for a1, a2 in itertools.product([-0.9, -0.1, 0.2, 1.0], repeat=2):
        assert _payoff(env, jnp.array([[a1], [a2]])) == float((a1 > 0) != (a2 > 0))


def _mixed_difference(env, a, b):
    """r(a1,a2) - r(a1,b2) - r(b1,a2) + r(b1,b2): zero for every a, b iff r is additive."""

    def r(x, y):
        return _payoff(env, jnp.array([[x], [y]]))

    return r(a, a) - r(a, b) - r(b, a) + r(b, b)


def test_intensity_moves_from_decomposable_to_interaction():
    for zeta in (0.0, 0.5, 1.0):
        env = make_env("toy/intensity", zeta=zeta)
        assert _payoff(env, jnp.array([[0.6], [-0.3]])) == pytest.approx(
            (1 - zeta) * (0.36 + 0.09) / 2 + zeta * 0.6 * -0.3
        )
        # The mixed difference of a1*a2 over (a, b) is (a - b)^2, scaled by zeta.
        assert _mixed_difference(env, 0.9, -0.4) == pytest.approx(zeta * 1.3**2, abs=1e-6)


def _shares(ds):
    a = np.asarray(ds.arrays["actions"])
    return {
        j: float(np.mean((a[:, 0] == j[0]) & (a[:, 1] == j[1])))
        for j in itertools.product([0, 1], repeat=2)
    }


@pytest.mark.parametrize("rare", [0.05, 0.2])
def test_coordination_data_make_the_optimum_rare(rare):
    ds = collect(make_env("toy/coordination"), CoordinationData(rare=rare), 20_000, seed=0)
    shares = _shares(ds)
    assert shares[(1, 1)] == pytest.approx(rare, abs=0.01)
    assert shares[(0, 0)] == 0.0
    assert shares[(0, 1)] == pytest.approx((1 - rare) / 2, abs=0.015)
    assert ds.stats()["return_mean"] == pytest.approx(1 + rare, abs=0.01)


def test_xor_data_sit_on_two_anti_correlated_modes():
    ds = collect(make_env("toy/xor"), XorData(), 5_000, seed=0)
    a = np.asarray(ds.arrays["actions"])[:, :, 0]
    assert np.mean(np.sign(a[:, 0]) != np.sign(a[:, 1])) > 0.999
    assert np.mean(a[:, 0] > 0) == pytest.approx(0.5, abs=0.03)
    assert np.abs(np.abs(a) - 0.9).mean() < 0.1  # near |a| = 1, clipped to the box
    assert ds.stats()["return_mean"] > 0.999


def test_intensity_gap_between_joint_data_and_its_marginals_grows_with_zeta():
    ds = collect(make_env("toy/intensity"), IntensityData(noise=0.0), 2_000, seed=0)
    a = np.asarray(ds.arrays["actions"])[:, :, 0]
    independent = np.stack([a[:, 0], np.random.default_rng(0).permutation(a[:, 1])], axis=1)
    for zeta in (0.0, 0.5, 1.0):
        env = make_env("toy/intensity", zeta=zeta)
        reward = jax.vmap(env.payoff)(jnp.asarray(a)[..., None])
        marginal = jax.vmap(env.payoff)(jnp.asarray(independent)[..., None])
        assert float(reward.mean()) == pytest.approx(0.64, abs=1e-5)
        assert float(reward.mean() - marginal.mean()) == pytest.approx(0.64 * zeta, abs=0.05)


def test_landmarks_script_follows_the_optimal_assignment():
    env = make_env("toy/landmarks", num_agents=4)
    behaviour = LandmarksData(noise=0.0)
    keys = jax.random.split(jax.random.PRNGKey(0), 16)
    states = jax.vmap(lambda k: env.reset(k)[0])(keys)
    assigned = jax.vmap(lambda k, s: behaviour.init(env, k, s, None))(keys, states)
    for i in range(16):
        agents, marks = np.asarray(states.agents[i]), np.asarray(states.landmarks[i])
        dist = np.linalg.norm(agents[:, None] - marks[None], axis=-1)
        best = min(itertools.permutations(range(4)), key=lambda p: dist[range(4), p].sum())
        assert tuple(np.asarray(assigned[i])) == best


def test_landmarks_scripted_data_cover_every_landmark():
    env = make_env("toy/landmarks", num_agents=5)
    clean = collect(env, LandmarksData(noise=0.0), 64, seed=0)
    noisy = collect(env, LandmarksData(noise=0.3), 64, seed=0)
    shuffled = collect(env, LandmarksData(noise=0.0, shuffle=1.0), 64, seed=0)
    # Speed 0.1 per axis crosses the [-1, 1] box in 20 < 25 steps: all landmarks end covered.
    final = np.asarray(clean.arrays["final_states"])
    agents, marks = final[:, :10].reshape(-1, 5, 2), final[:, 10:].reshape(-1, 5, 2)
    gap = np.linalg.norm(agents[:, :, None] - marks[:, None], axis=-1).min(axis=1)
    assert gap.max() < 1e-5
    assert clean.stats()["length_max"] == 25 and clean.stats()["truncated_episodes"] == 64
    r = {
        name: d.stats()["return_mean"]
        for name, d in [("clean", clean), ("noisy", noisy), ("shuffled", shuffled)]
    }
    assert r["clean"] > r["noisy"] and r["clean"] > r["shuffled"]


@pytest.mark.parametrize("num_agents", [3, 40])
def test_landmarks_scale_to_many_agents(num_agents):
    env = make_env("toy/landmarks", num_agents=num_agents)
    ds = collect(env, LandmarksData(), 8, seed=1)
    assert ds.arrays["observations"].shape == (8 * 25, num_agents, 4 * num_agents)
    assert ds.arrays["actions"].shape == (8 * 25, num_agents, 2)
    ds.validate()
