"""MA-TD3+BC: the Q term's weight decides between imitation and the critic's optimum."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from macflow.agents.matd3bc import MATD3BC, MATD3BCConfig
from macflow.data import Dataset, Sampler
from macflow.envs import EnvSpec

import builders
from baselines import assert_trains_and_evaluates, episode_returns, fit

TINY = MATD3BCConfig(actor_hidden=(32, 32), critic_hidden=(32, 32), lr=1e-3)
create = jax.jit(MATD3BC.create, static_argnums=(1, 2))


def optimum_share(run) -> float:
    return float(np.mean(episode_returns(run, "matd3bc") == 2.0))


def closed_form_share(alpha: float) -> float:
    """The sampled policies' P((1,1)) at the actor loss's optimum on toy/coordination.

    VDN fits ``Q_tot = a1 + a2`` exactly (the payoff is additive), so ``Q_tot(pi) = 2p`` and
    ``lambda = alpha / 2p``. Each agent's logit then minimises ``-lambda * p + CE(p) / 2`` (the
    BC term averages the two agents), with ``CE = -0.525 log p - 0.475 log(1 - p)`` from the
    data's marginal; its stationary point is ``p = (0.525 + alpha) / (1 + alpha)``."""
    p = (0.525 + alpha) / (1 + alpha)
    return p * p


@pytest.mark.parametrize("alpha", [25.0, 2.5, 0.01])
def test_coordination_rare_optimum_needs_enough_q_weight(datasets, tmp_path, alpha):
    config = dataclasses.replace(TINY, alpha=alpha)
    run = fit(datasets["coord"], tmp_path, "run", "matd3bc", config, 1500, episodes=2000)
    share = optimum_share(run)
    expected = closed_form_share(alpha)
    print(f"\ncoordination, MA-TD3+BC alpha={alpha}: sampled policies choose (1,1) in "
          f"{share:.3f} (closed form {expected:.3f})")  # fmt: skip
    # The cross-entropy's pull toward the data never vanishes, so the softmax never saturates:
    # TD3+BC's default alpha = 2.5 leaves a quarter of the sampled episodes off the optimum.
    assert share == pytest.approx(expected, abs=0.03)
    if alpha >= 25:
        assert share >= 0.9
    if alpha <= 0.01:  # BC dominates: independent agents each play their marginal 0.525
        assert share <= 0.31
    if alpha >= 2.5:  # the greedy policies always meet at the optimum
        assert all(r["return_mean"] == 2.0 for r in run.final["modes"]["zero"])


# --- a continuous case with a closed-form answer --------------------------------------------

LINEAR = EnvSpec("test/linear", 2, 1, 2, 1, discrete=False, episode_limit=1,
                 action_low=(-1.0,), action_high=(1.0,))  # fmt: skip


def linear_sampler(n=4096) -> Sampler:
    """One-step episodes, constant observations, uniform actions (mirrored, so of mean 0),
    reward ``1 + a1 + a2``."""
    rng = np.random.default_rng(0)
    half = rng.uniform(-1, 1, (n // 2, 2, 1)).astype(np.float32)
    actions = np.concatenate([half, -half])  # every agent's data mean is exactly 0
    arrays = {
        "observations": np.ones((n, 2, 1), np.float32),
        "states": np.ones((n, 2), np.float32),
        "actions": actions,
        "rewards": 1 + actions.sum(axis=(1, 2)),
        "terminals": np.ones(n, bool),
        "truncations": np.zeros(n, bool),
        "final_observations": np.ones((n, 2, 1), np.float32),
        "final_states": np.ones((n, 2), np.float32),
    }
    return Sampler.from_dataset(Dataset(arrays=arrays, spec=LINEAR))


def train_direct(config, sampler, spec, steps, seeds=(0, 1), batch_size=128):
    """``steps`` updates of every seed side by side (vmap), without the evaluation loop."""
    keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    agents = jax.jit(jax.vmap(lambda k: MATD3BC.create(k, spec, config)))(keys)

    @jax.jit
    def run(agents, sampler):
        def body(agents, i):
            batch = jax.vmap(lambda k: sampler.sample(jax.random.fold_in(k, i), batch_size))(keys)
            return jax.vmap(lambda a, b: a.update(b, "td3bc"))(agents, batch)

        return jax.lax.scan(body, agents, jnp.arange(steps))

    return run(agents, sampler)


def test_continuous_actor_moves_to_the_closed_form_td3bc_optimum():
    """With ``Q_tot = 1 + a1 + a2`` and data actions of mean 0, each agent's actor minimises
    ``-lambda * Q_i(a) + (a - 0)^2 / 2`` (the BC term averages the agents), so at the optimum
    ``a = lambda * dQ_i/da``. With the exact slope 1, ``lambda = alpha / (1 + 2a)`` gives
    ``a = 0.896`` at alpha 2.5 (far from the data mean 0, toward higher Q) and ``a = 0.0098`` at
    alpha 0.01 (the BC solution)."""
    sampler = linear_sampler()
    obs = jnp.ones((1, 2, 1))

    @jax.jit
    def actions_and_slopes(agents):
        def one(agent):
            a = agent._actor_out(agent.params["actor"], obs)
            q = lambda x: agent._critic().apply(agent.params["critic"], obs, x)[0].sum()  # noqa: E731
            return a[0, :, 0], jax.grad(q)(a)[0, :, 0]

        return jax.vmap(one)(agents)

    for alpha, expected in ((2.5, (-1 + 21**0.5) / 4), (0.01, 0.01 / 1.02)):
        config = dataclasses.replace(TINY, alpha=alpha)
        # Large batches: the minibatch mean of the data actions (the BC target) jitters less.
        agents, info = train_direct(config, sampler, LINEAR, 1500, batch_size=512)
        actions, slopes = map(np.asarray, actions_and_slopes(agents))
        lam = np.asarray(info["actor/lambda"][-100:]).mean(axis=0)
        print(f"\nlinear toy, alpha={alpha}: deterministic actions {np.round(actions, 3).tolist()}"
              f" (closed form {expected:.3f}), lambda {np.round(lam, 3).tolist()}, critic "
              f"slopes {np.round(slopes, 3).tolist()}")  # fmt: skip
        # The actor sits at the stationary point of its loss under its own critic ...
        np.testing.assert_allclose(actions, lam[:, None] * slopes, atol=0.03)
        # ... and the critic's fitted slope is close to 1, so near the closed form.
        np.testing.assert_allclose(slopes, 1.0, atol=0.1)
        np.testing.assert_allclose(actions, expected, atol=0.05)


# --- mechanics ------------------------------------------------------------------------------


def changed(a, b) -> bool:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return not all(np.array_equal(x, y) for x, y in pairs)


def test_actor_and_targets_move_only_every_policy_delay_updates():
    sampler = Sampler.from_dataset(builders.dataset(False))
    spec = builders.spec(False)
    agent = create(jax.random.PRNGKey(0), spec, TINY)
    batch = sampler.gather(jnp.arange(10))
    one, info1 = agent.update(batch, "td3bc")
    two, info2 = one.update(batch, "td3bc")
    assert changed(agent.params["critic"], one.params["critic"])
    assert not changed(agent.params["actor"], one.params["actor"])
    assert not changed(agent.target, one.target)
    assert changed(one.params["actor"], two.params["actor"])
    assert changed(one.target["actor"], two.target["actor"])
    assert changed(one.target["critic"], two.target["critic"])
    assert (float(info1["actor/updated"]), float(info2["actor/updated"])) == (0.0, 1.0)


@pytest.mark.parametrize("discrete", [True, False])
def test_td_target_takes_the_min_of_the_twin_heads_and_bootstraps_only_before_terminals(discrete):
    sampler = Sampler.from_dataset(builders.dataset(discrete))
    spec = builders.spec(discrete)
    agent = create(jax.random.PRNGKey(0), spec, TINY)
    batch = sampler.gather(jnp.arange(10))
    key = jax.random.PRNGKey(5)
    y = np.asarray(jax.jit(agent.td_target)(batch, key))
    out = agent._actor_out(agent.target["actor"], batch.next_observations)
    if discrete:
        next_a = jnp.argmax(jnp.where(batch.next_legal_actions, out, -1e9), axis=-1)
        assert np.asarray(
            jnp.take_along_axis(batch.next_legal_actions, next_a[..., None], -1)
        ).all()
    else:
        noise = jnp.clip(0.2 * jax.random.normal(key, out.shape), -0.5, 0.5)
        next_a = jnp.clip(out + noise, -1, 1)
    q = agent._utilities(agent.target["critic"], batch.next_observations, next_a).sum(-1)
    assert not np.allclose(q[0], q[1])  # the twin heads differ, so the min matters
    q_next = np.asarray(q.min(axis=0))
    r = np.asarray(batch.rewards)
    for t in range(10):
        if t in (2, 9):  # terminal
            assert y[t] == pytest.approx(r[t])
        else:  # mid-episode and truncation (3, 7) bootstrap
            assert y[t] == pytest.approx(r[t] + 0.99 * q_next[t], rel=1e-5)


def test_discrete_q_term_sends_gradient_to_the_actor():
    sampler = Sampler.from_dataset(builders.dataset(True))
    spec = builders.spec(True)
    batch = sampler.gather(jnp.arange(10))

    def grads(alpha):
        agent = create(jax.random.PRNGKey(0), spec, dataclasses.replace(TINY, alpha=alpha))
        g, _ = jax.jit(jax.grad(agent.actor_loss, has_aux=True))(agent.params["actor"], batch)
        return jax.tree.leaves(g)

    bc_only, with_q = grads(0.0), grads(2.5)
    diff = sum(float(jnp.sum((a - b) ** 2)) for a, b in zip(bc_only, with_q, strict=True))
    assert diff > 1e-8  # the expected utility of the softmax reaches the actor


def test_continuous_actions_stay_within_the_bounds():
    spec = builders.spec(False)
    agent = create(jax.random.PRNGKey(0), spec, dataclasses.replace(TINY, act_noise=5.0))
    obs = 10 * jax.random.normal(jax.random.PRNGKey(1), (512, spec.num_agents, spec.obs_dim))
    for mode in ("sample", "zero"):
        a = np.asarray(agent.act(jax.random.PRNGKey(2), obs, None, mode))
        assert (a >= np.asarray(spec.action_low)).all() and (
            a <= np.asarray(spec.action_high)
        ).all()


@pytest.mark.parametrize(
    "field,value", [("policy_delay", 0), ("alpha", -1.0), ("mixer", "sum"), ("tau", 0.0)]
)
def test_invalid_config_is_rejected(field, value):
    with pytest.raises(ValueError, match=field.replace("_", "-")):  # the --agent.* flag
        MATD3BCConfig(**{field: value})


# --- real datasets --------------------------------------------------------------------------


def test_trains_and_evaluates_on_spread(datasets, tmp_path):
    run = fit(datasets["spread"], tmp_path, "spread", "matd3bc", TINY, 200, episodes=8)
    assert_trains_and_evaluates(run)


def test_trains_and_evaluates_on_3m_with_qmix(datasets, tmp_path):
    config = dataclasses.replace(TINY, mixer="qmix")
    run = fit(datasets["3m"], tmp_path, "3m", "matd3bc", config, 200, episodes=8)
    assert_trains_and_evaluates(run)
