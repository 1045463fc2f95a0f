"""OMIGA: the regularisation weight alpha moves it between greedy-in-Q and plain BC; mechanics."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from macflow.agents.omiga import OMIGA, OMIGAConfig, linear_exp
from macflow.data import Sampler
from macflow.train import load_run

import builders
from baselines import assert_trains_and_evaluates, episode_returns, fit

TINY = OMIGAConfig(hidden=(32, 32), mixer_hidden=16, lr=1e-3)


def optimum_shares(run) -> np.ndarray:
    """Per seed: share of sampled episodes at the optimum (1,1), the only joint action paying 2."""
    return (episode_returns(run, "omiga") == 2.0).mean(axis=1)


@pytest.mark.parametrize("alpha", [0.1, 100.0])
def test_coordination_alpha_moves_between_greedy_and_bc(datasets, tmp_path, alpha):
    run = fit(datasets["coord"], tmp_path, "coord", "omiga", dataclasses.replace(TINY, alpha=alpha),
              1500, episodes=2000)  # fmt: skip
    shares = optimum_shares(run)
    print(f"\ncoordination, OMIGA alpha={alpha}: sampled (1,1) share per seed {shares}")
    if alpha < 1:
        # exp(w_i (Q_i - V_i) / alpha): the 1-action's weight beats the 0-action's by e^(1/alpha)
        # (the payoff gap is 1), so each agent plays 1 almost surely.
        assert shares.min() >= 0.90
        for r in run.final["modes"]["zero"]:
            assert r["return_mean"] == 2.0
    else:
        # Weights ~ e^(+-0.005) ~ 1: behaviour cloning of each agent's marginal 0.525, and
        # independent agents meet at (1,1) with probability 0.525^2 = 0.276.
        assert shares.max() <= 0.32
        assert shares.mean() == pytest.approx(0.525**2, abs=0.03)


def test_trains_and_evaluates_on_spread_and_3m(datasets, tmp_path):
    for name in ("spread", "3m"):
        run = fit(datasets[name], tmp_path, name, "omiga", TINY, 100, episodes=4)
        assert_trains_and_evaluates(run)
    # The trained 3m policy never picks an illegal action, whatever the mask.
    _, _, _, agents, _ = load_run(run.path)
    agent = jax.tree.map(lambda x: x[0], agents)
    spec = agent.spec
    key = jax.random.PRNGKey(3)
    legal = jax.random.bernoulli(key, 0.3, (2048, spec.num_agents, spec.action_dim))
    legal = legal.at[..., 0].set(legal[..., 0] | ~legal.any(-1))
    obs = jax.random.normal(key, (2048, spec.num_agents, spec.obs_dim))
    for mode in ("sample", "zero"):
        a = agent.act(key, obs, legal, mode)
        assert np.asarray(jnp.take_along_axis(legal, a[..., None], -1)).all()


# --- mechanics -----------------------------------------------------------------------------


def test_value_exponential_continues_linearly_above_the_clip():
    z = jnp.array([-3.0, 0.0, 9.9, 10.0, 10.1, 50.0])
    out = linear_exp(z, 10.0)
    np.testing.assert_allclose(out[:4], jnp.exp(z[:4]), rtol=1e-6)
    assert float(linear_exp(jnp.float32(10.0 + 1e-4), 10.0)) == pytest.approx(np.exp(10.0), 1e-3)
    grads = jax.vmap(jax.grad(lambda x: linear_exp(x, 10.0)))(z)
    # The gradient never vanishes, so V is never pushed down by the linear term alone.
    assert np.all(np.asarray(grads[3:]) == pytest.approx(np.exp(10.0), rel=1e-5))


def test_value_loss_minimiser_is_the_soft_maximum():
    """For fixed Q and w, L_V is minimised at V_i = (alpha/w_i) log E_mu exp(w_i Q_i / alpha)."""
    q = jnp.array([0.0, 1.0, 1.0, 3.0])
    w, alpha = 0.7, 0.5

    def loss(v):
        return (linear_exp(w * (q - v) / alpha, 10.0) + w * v / alpha).mean()

    v = alpha / w * np.log(np.mean(np.exp(w * np.asarray(q) / alpha)))
    grad = jax.jit(jax.vmap(jax.grad(loss)))(jnp.array([v - 0.1, v, v + 0.1]))
    assert abs(float(grad[1])) < 1e-5
    assert float(grad[0]) < 0 < float(grad[2])  # convex: v is the minimum
    assert float(q.mean()) < v < float(q.max())  # a soft maximum of the data's Q


def _create(spec, config=TINY, seed=0):
    return jax.jit(lambda k: OMIGA.create(k, spec, config))(jax.random.PRNGKey(seed))


@pytest.fixture(scope="module")
def hand():
    return Sampler.from_dataset(builders.dataset(True)), builders.spec(True)


def test_td_target_bootstraps_after_truncation_and_not_after_terminal(hand):
    sampler, spec = hand
    agent = _create(spec)
    batch = sampler.gather(jnp.arange(10))

    @jax.jit
    def both(agent, batch):
        v_next = agent.values(agent.target["v"], batch.next_observations)
        return agent.td_target(batch), agent.mix(agent.target["mixer"], v_next, batch.next_states)

    y, v_tot = map(np.asarray, both(agent, batch))
    r = np.asarray(batch.rewards)
    for t in range(10):
        if t in (2, 9):  # terminal
            assert y[t] == pytest.approx(r[t])
        else:  # truncation (3, 7: from the final observation) and mid-episode
            assert y[t] == pytest.approx(r[t] + 0.99 * v_tot[t], rel=1e-5)
            assert abs(y[t] - r[t]) > 1e-6


def test_mixer_weights_are_non_negative_and_shared_by_q_and_v(hand):
    _, spec = hand
    agent = _create(spec, seed=1)
    states = jax.random.normal(jax.random.PRNGKey(2), (256, spec.state_dim)) * 10

    @jax.jit
    def parts(agent):
        w, b = agent._mixer().apply(agent.params["mixer"], states)
        ones = jnp.ones((256, spec.num_agents))
        return w, b, agent.mix(agent.params["mixer"], ones, states)

    w, b, mixed = parts(agent)
    assert np.all(np.asarray(w) >= 0)
    # Q_tot and V_tot go through this one mix: equal local values, equal team values.
    np.testing.assert_allclose(mixed, w.sum(-1) + b, rtol=1e-5)


def test_actor_gradient_reaches_the_policy_and_continuous_actions_stay_in_bounds():
    spec = builders.spec(False)
    sampler = Sampler.from_dataset(builders.dataset(False))
    agent = _create(spec)
    batch = sampler.gather(jnp.arange(10))

    @jax.jit
    def grad_norm(agent, batch):
        grads, _ = jax.grad(agent.actor_loss, has_aux=True)(agent.params["policy"], batch)
        return optax.tree.norm(grads)

    assert float(grad_norm(agent, batch)) > 1e-4
    obs = jax.random.normal(jax.random.PRNGKey(1), (512, spec.num_agents, spec.obs_dim)) * 5
    for mode in ("sample", "zero"):
        a = np.asarray(agent.act(jax.random.PRNGKey(2), obs, None, mode))
        assert a.shape == (512, spec.num_agents, spec.action_dim)
        assert np.all(a >= np.asarray(spec.action_low))
        assert np.all(a <= np.asarray(spec.action_high))


def test_paper_preset_and_validation():
    config = OMIGA.presets["paper"](builders.spec(True))
    assert (config.alpha, config.lr, config.tau, config.hidden) == (10.0, 5e-4, 0.005, (256, 256))
    with pytest.raises(ValueError, match="alpha"):
        OMIGAConfig(alpha=0.0)
