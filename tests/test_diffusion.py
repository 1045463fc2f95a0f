"""Diffusion policy (MADiff / DoF-policy / Diffusion-QL): a joint, centralised DDPM that keeps
the data's joint modes, reproduces the joint distribution, follows Q guidance, and its mechanics.

T = 20 diffusion steps in the learning tests (5 in the Q-guided one, Diffusion-QL's setting) and
the smoke tests, to keep them fast; the ``paper`` preset uses T = 200.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from macflow.agents import get_agent
from macflow.agents.diffusion import Diffusion, DiffusionConfig, ddim_indices, schedule
from macflow.data import Sampler, load
from macflow.envs import make_env
from macflow.train import load_run

import builders
from baselines import assert_trains_and_evaluates, episode_returns, fit

SMALL = DiffusionConfig(
    hidden=(64, 64), critic_hidden=(64, 64), timesteps=20, lr=1e-3, ema=0.995, guide_steps=5,
)  # fmt: skip


def _agent(run, seed_index):
    agents = load_run(run.path)[3]
    return jax.tree.map(lambda x: x[seed_index], agents)


def _joint_samples(agent, n, method, steps=None, mode="sample"):
    """``n`` joint actions of the one-step toys (constant observation 1, state = obs concat)."""
    spec = agent.spec
    obs, states = jnp.ones((n, 2, 1)), jnp.ones((n, 2))
    legal = jnp.ones((n, 2, spec.action_dim), bool) if spec.discrete else None
    policy = agent.target["policy"]  # the EMA weights that act
    return np.asarray(
        agent.sample(policy, jax.random.PRNGKey(7), states, obs, legal, method, steps, mode)
    )


def test_xor_joint_policy_keeps_both_modes_in_both_samplers(datasets, tmp_path):
    run = fit(datasets["xor"], tmp_path, "xor", "diffusion", SMALL, 2000, episodes=2000)
    assert_trains_and_evaluates(run)
    payoff = jax.vmap(make_env("toy/xor").payoff)  # the env's own reward: 1 when signs differ
    for s in range(2):
        agent = _agent(run, s)
        for method in ("ddpm", "ddim"):
            a = _joint_samples(agent, 5000, method, 15 if method == "ddim" else None)
            agree = float(np.mean(np.sign(a[:, 0, 0]) == np.sign(a[:, 1, 0])))
            size, pos = float(np.abs(a).mean()), float(np.mean(a[:, 0, 0] > 0))
            ret = float(payoff(jnp.asarray(a)).mean())
            print(
                f"\nxor seed {s} {method}: sign agreement {agree:.3f}, mean |a| {size:.2f}, "
                f"share of a_1 > 0 {pos:.2f}, return {ret:.3f}"
            )
            assert agree < 0.10
            assert size > 0.8  # not collapsed toward 0 (Gaussian BC's failure)
            assert 0.3 < pos < 0.7  # both modes kept
            assert ret > 0.9
    returns = [r["return_mean"] for r in run.final["modes"]["sample"]]
    print(f"xor, environment evaluation (ddpm, sampled): {returns}")
    assert min(returns) > 0.9


def test_coordination_reproduces_the_joint_distribution_without_q(datasets, tmp_path):
    run = fit(datasets["coord"], tmp_path, "bc", "diffusion", SMALL, 3000, episodes=4000)
    assert_trains_and_evaluates(run)
    returns = episode_returns(run, "diffusion")  # ddpm, sampled; return 2 <=> (1,1)
    for s in range(2):
        a = _joint_samples(_agent(run, s), 4000, "ddim", 15)
        ddim = float(np.mean((a[:, 0] == 1) & (a[:, 1] == 1)))
        best, worst = np.mean(returns[s] == 2.0), np.mean(returns[s] == 0.0)
        print(
            f"\ncoordination seed {s}: P((1,1)) ddpm {best:.4f} (data 0.05, product of "
            f"marginals 0.276), P((0,0)) {worst:.4f} (data 0), ddim-15 P((1,1)) {ddim:.4f}"
        )
        assert best == pytest.approx(0.05, abs=0.02)
        assert worst < 0.01
        # Deterministic DDIM (eta = 0) over-samples the rare mode a little, yet stays joint.
        assert 0.02 < ddim < 0.12


def test_coordination_q_guidance_picks_the_optimum(datasets, tmp_path):
    config = dataclasses.replace(
        Diffusion.presets["ql"](make_env("toy/coordination").spec),
        hidden=(64, 64), critic_hidden=(64, 64), lr=1e-3, ema=0.99, q_weight=3.0,
    )  # fmt: skip
    run = fit(datasets["coord"], tmp_path, "ql", "diffusion", config, 500, episodes=4000)
    shares = np.mean(episode_returns(run, "diffusion") == 2.0, axis=1)
    print(f"\ncoordination with Q guidance (ql preset, weight 3): P((1,1)) per seed {shares}")
    assert shares.min() >= 0.90
    for r in run.final["modes"]["zero"]:
        assert r["return_mean"] == 2.0


@pytest.mark.parametrize("name", ["spread", "3m"])
def test_trains_and_evaluates_on_real_data(datasets, tmp_path, name):
    config = DiffusionConfig(hidden=(16,), critic_hidden=(16,), timesteps=20)
    run = fit(datasets[name], tmp_path, name, "diffusion", config, 20, log_every=10, episodes=4)
    assert_trains_and_evaluates(run)
    if name != "3m":
        return
    # Never an illegal action, on the dataset's own rows and on random masks.
    agent = _agent(run, 0)
    rows = Sampler.from_dataset(load(datasets[name])).gather(jnp.arange(512))
    key = jax.random.PRNGKey(3)
    masks = jax.random.bernoulli(key, 0.3, rows.legal_actions.shape)
    masks = masks.at[..., 0].set(masks[..., 0] | ~masks.any(-1))  # at least one legal
    for legal in (rows.legal_actions, masks):
        for mode in ("sample", "zero"):
            act = agent.act(key, rows.observations, legal, mode, rows.states)
            assert np.asarray(jnp.take_along_axis(legal, act[..., None], -1)).all()


# --- mechanics -----------------------------------------------------------------------------

TINY = DiffusionConfig(hidden=(16, 16), critic_hidden=(16, 16), timesteps=20, q_weight=1.0)


def _create(spec, config):
    return jax.jit(Diffusion.create, static_argnums=(1, 2))(jax.random.PRNGKey(0), spec, config)


def test_act_is_centralised_on_the_state_and_needs_it():
    spec = builders.spec(False)
    agent = _create(spec, TINY)
    obs = jax.random.normal(jax.random.PRNGKey(1), (64, spec.num_agents, spec.obs_dim))
    states = jax.random.normal(jax.random.PRNGKey(2), (64, spec.state_dim))
    for mode in ("sample", "zero"):
        a = np.asarray(agent.act(jax.random.PRNGKey(3), obs, None, mode, states))
        b = np.asarray(agent.act(jax.random.PRNGKey(3), obs, None, mode, states + 3.0))
        assert not np.allclose(a, b)  # the joint action is denoised from the state
        assert (np.abs(a) <= np.asarray(spec.action_high)).all()  # within the env's bounds
    with pytest.raises(ValueError, match="centralised"):
        agent.act(jax.random.PRNGKey(3), obs, None, "sample")


def test_schedules_and_samplers():
    for kind in ("cosine", "vp"):
        for t in (20, 200):
            abar = schedule(kind, t)["abar"]
            assert (np.diff(abar) < 0).all() and abar[0] > 0.95 and abar[-1] < 0.01
    for t, k in ((200, 15), (200, 1), (20, 20)):
        idx = ddim_indices(t, k)
        assert len(idx) == k and idx[0] == t - 1 and (np.diff(idx) < 0).all()
        assert k == 1 or idx[-1] == 0
    # DDIM over all T steps with eta = 1 is the ancestral DDPM chain (same noise draws).
    spec = builders.spec(False)
    agent = _create(spec, dataclasses.replace(TINY, eta=1.0))
    obs = jax.random.normal(jax.random.PRNGKey(1), (256, spec.num_agents, spec.obs_dim))
    states = jax.random.normal(jax.random.PRNGKey(2), (256, spec.state_dim))
    p, key = agent.params["policy"], jax.random.PRNGKey(4)
    ddpm = np.asarray(agent.sample(p, key, states, obs, None, "ddpm"))
    ddim = np.asarray(agent.sample(p, key, states, obs, None, "ddim", 20))
    np.testing.assert_allclose(ddpm, ddim, atol=1e-4)
    ddim15 = np.asarray(agent.sample(p, key, states, obs, None, "ddim", 15))
    for a in (ddpm, ddim15):
        assert np.abs(a).max() <= 1.0 and a.std() > 0.1  # in range, not degenerate
    # zero mode is deterministic: x_T = 0, eta = 0, whatever the key.
    for method in ("ddpm", "ddim"):
        z1 = agent.sample(p, key, states, obs, None, method, None, "zero")
        z2 = agent.sample(p, jax.random.PRNGKey(5), states, obs, None, method, None, "zero")
        np.testing.assert_array_equal(z1, z2)


@pytest.mark.parametrize("discrete", [True, False])
def test_q_term_reaches_the_denoiser_and_td_stops_at_terminals(discrete):
    sampler, spec = Sampler.from_dataset(builders.dataset(discrete)), builders.spec(discrete)
    batch = sampler.gather(jnp.arange(10))
    agent = _create(spec, TINY)
    key = jax.random.PRNGKey(1)

    @jax.jit
    def probe(agent):
        grads = jax.grad(lambda p: agent.q_value(p, batch, key).mean())(agent.params["policy"])
        norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads)))
        info = {} if discrete else agent.update(batch, "all")[1]
        return norm, agent.td_target(batch, key), info

    norm, y, info = probe(agent)
    assert float(norm) > 1e-4  # through the short DDIM chain (and the softmax when discrete)
    r = np.asarray(batch.rewards)
    for t in range(10):  # terminals at rows 2 and 9; truncations (3, 7) are bootstrapped
        assert (abs(float(y[t]) - r[t]) < 1e-6) == (t in (2, 9))
    if not discrete:  # (the discrete Q-guided update runs in the coordination test)
        assert "critic/td_loss" in info and "actor/q" in info
        assert all(np.isfinite(float(v)) for v in info.values())


def test_presets_and_config_errors():
    cls = get_agent("diffusion")
    assert cls is Diffusion and cls.centralised
    for discrete in (True, False):
        paper = cls.presets["paper"](builders.spec(discrete))
        assert (paper.timesteps, paper.sampler, paper.q_weight) == (200, "ddpm", 0.0)
        assert paper.hidden == (512,) * 4
        assert cls.presets["ql"](builders.spec(discrete)).q_weight > 0
    with pytest.raises(ValueError, match="--agent.ddim-steps"):
        DiffusionConfig(timesteps=10, ddim_steps=15)
    with pytest.raises(ValueError, match="eta"):
        DiffusionConfig(eta=2.0)
