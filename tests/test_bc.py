"""BC: independent per-agent imitation reproduces each agent's marginal, never the coupling."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from macflow.agents.bc import BC, BCConfig
from macflow.data import Sampler
from macflow.train import load_run

import builders
from baselines import assert_trains_and_evaluates, episode_returns, fit

TINY = BCConfig(hidden=(32, 32), lr=1e-3)
create = jax.jit(BC.create, static_argnums=(1, 2))


def test_xor_gaussian_bc_collapses_the_two_modes(datasets, tmp_path):
    run = fit(datasets["xor"], tmp_path, "xor", "bc", TINY, 1500, episodes=2000)
    _, _, _, agents, _ = load_run(run.path)
    obs, key = jnp.ones((5000, 2, 1)), jax.random.PRNGKey(7)
    returns = episode_returns(run, "bc").mean(axis=1)
    behaviour = run.final["behaviour"]["return_mean"]
    for s in range(2):
        agent = jax.tree.map(lambda x, s=s: x[s], agents)
        zero = np.asarray(agent.act(key, obs[:1], None, "zero"))[0, :, 0]
        sample = np.asarray(agent.act(jax.random.fold_in(key, s), obs, None, "sample"))[..., 0]
        agree = float(np.mean(np.sign(sample[:, 0]) == np.sign(sample[:, 1])))
        print(
            f"\nxor seed {s}: zero-mode actions {np.round(zero, 3).tolist()}, sampled sign "
            f"agreement {agree:.3f}, share of a_1 > 0 {np.mean(sample[:, 0] > 0):.3f}, "
            f"mean |a| {np.abs(sample).mean():.2f}, sampled return {returns[s]:.3f} "
            f"(data {behaviour:.3f})"
        )
        # Each agent's marginal is a 50/50 mix of -1 and +1: one Gaussian (pre-tanh) centres
        # on 0 and spreads over both signs, and the agents draw their signs independently.
        assert np.abs(zero).max() < 0.3
        assert 0.4 < agree < 0.6
        assert 0.4 < np.mean(sample[:, 0] > 0) < 0.6
        assert 0.4 < returns[s] < 0.6
    assert behaviour > 0.95


def test_coordination_bc_reproduces_each_agents_marginal(datasets, tmp_path):
    run = fit(datasets["coord"], tmp_path, "coord", "bc", TINY, 1500, episodes=2000)
    returns = episode_returns(run, "bc")
    shares = (returns == 2.0).mean(axis=1)
    print(f"\ncoordination, BC sampled policies choose (1,1): {np.round(shares, 3).tolist()}")
    # P(a_i = 1) = 0.525 per agent, drawn independently: 0.525^2 = 0.276, not the data's
    # joint 5% and not the optimum.
    for share in shares:
        assert share == pytest.approx(0.525**2, abs=0.03)


@pytest.mark.parametrize("discrete", [True, False])
def test_loss_is_finite_on_bound_actions_and_falls(discrete):
    """Dataset actions on the bounds (atanh = inf) stay finite; a few steps lower the NLL."""
    spec = builders.spec(discrete)
    ds = builders.dataset(discrete)
    if not discrete:  # put half the actions exactly on the box's bounds
        actions = ds.arrays["actions"].copy()
        actions[::2] = np.asarray(spec.action_high)
        ds = dataclasses.replace(ds, arrays={**ds.arrays, "actions": actions})
    batch = Sampler.from_dataset(ds).gather(jnp.arange(10))
    agent = create(jax.random.PRNGKey(0), spec, TINY)

    @jax.jit
    def steps(agent):
        return jax.lax.scan(lambda a, _: a.update(batch, "bc"), agent, None, length=50)

    _, info = steps(agent)
    loss = np.asarray(info["actor/loss"])
    assert np.isfinite(loss).all()
    assert loss[-1] < loss[0]


def test_presets_and_invalid_config():
    for discrete in (True, False):
        spec = builders.spec(discrete)
        assert BC.presets["paper"](spec).hidden == (512,) * 4
        assert BC.presets["og-marl"](spec).hidden == (64, 64)
    with pytest.raises(ValueError, match="log_std_min"):
        BCConfig(log_std_min=3.0)
    with pytest.raises(ValueError, match="action_eps"):
        BCConfig(action_eps=0.0)


def test_trains_and_evaluates_on_spread(datasets, tmp_path):
    run = fit(datasets["spread"], tmp_path, "spread", "bc", TINY, 200, episodes=8)
    assert_trains_and_evaluates(run)


def test_trains_and_evaluates_on_3m(datasets, tmp_path):
    run = fit(datasets["3m"], tmp_path, "3m", "bc", TINY, 200, episodes=8)
    assert_trains_and_evaluates(run)
