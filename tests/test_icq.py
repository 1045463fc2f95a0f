"""ICQ: the actor temperature beta moves it between greedy and BC; the critic's target stays in
the data's actions; discrete only."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from macflow.agents.icq import ICQ, ICQConfig, batch_softmax
from macflow.data import Dataset, Sampler
from macflow.train import load_run

import builders
from baselines import assert_trains_and_evaluates, episode_returns, fit

TINY = ICQConfig(
    actor_hidden=(32, 32), critic_hidden=(32, 32), mixer_hidden=16, lr=1e-3, critic_lr=1e-3
)


@pytest.mark.parametrize("beta", [0.1, 100.0])
def test_coordination_beta_moves_between_greedy_and_bc(datasets, tmp_path, beta):
    config = dataclasses.replace(TINY, beta=beta)
    run = fit(datasets["coord"], tmp_path, "coord", "icq", config, 1500, episodes=2000)
    shares = (episode_returns(run, "icq") == 2.0).mean(axis=1)  # (1,1) is the only 2
    print(f"\ncoordination, ICQ beta={beta}: sampled (1,1) share per seed {shares}")
    if beta < 1:
        # The weights softmax(w_i A_i / beta) favour the 1-action by e^(1/beta) (payoff gap 1).
        assert shares.min() >= 0.90
        for r in run.final["modes"]["zero"]:
            assert r["return_mean"] == 2.0
    else:
        # Weights ~ 1: behaviour cloning of each agent's marginal 0.525 -> 0.525^2 = 0.276.
        assert shares.max() <= 0.32
        assert shares.mean() == pytest.approx(0.525**2, abs=0.03)


def test_trains_and_evaluates_on_3m_without_illegal_actions(datasets, tmp_path):
    run = fit(datasets["3m"], tmp_path, "3m", "icq", TINY, 100, episodes=4)
    assert_trains_and_evaluates(run)
    _, _, _, agents, _ = load_run(run.path)
    agent = jax.tree.map(lambda x: x[0], agents)
    spec = agent.spec
    key = jax.random.PRNGKey(3)
    legal = jax.random.bernoulli(key, 0.3, (2048, spec.num_agents, spec.action_dim))
    legal = legal.at[..., 0].set(legal[..., 0] | ~legal.any(-1))  # at least one legal
    obs = jax.random.normal(key, (2048, spec.num_agents, spec.obs_dim))
    for mode in ("sample", "zero"):
        a = agent.act(key, obs, legal, mode)
        assert np.asarray(jnp.take_along_axis(legal, a[..., None], -1)).all()


# --- mechanics -----------------------------------------------------------------------------


def test_continuous_tasks_are_refused_with_a_clear_error():
    spec = builders.spec(False)
    for make in (lambda: ICQ.create(jax.random.PRNGKey(0), spec, TINY),
                 lambda: ICQ.presets["paper"](spec)):  # fmt: skip
        with pytest.raises(ValueError, match=r"icq is for discrete actions.*'test/hand'"):
            make()


def _create(spec, config=TINY):
    return jax.jit(lambda k: ICQ.create(k, spec, config))(jax.random.PRNGKey(0))


def _shift_utility(agent, action: int, amount: float):
    """The agent with its target utilities of ``action`` moved by ``amount`` everywhere (the
    output layer's bias of that action)."""
    flat = traverse_util.flatten_dict(agent.target["critic"])
    last = max(k for k in flat if k[-1] == "bias")  # the output Dense has the highest index
    flat[last] = flat[last].at[..., action].add(amount)
    target = dict(agent.target, critic=traverse_util.unflatten_dict(flat))
    return agent.replace(target=target)


def test_critic_target_never_queries_actions_absent_from_the_data():
    # The hand dataset with every action legal, but the data only ever take actions 0 and 1.
    arrays = builders.arrays(True)
    arrays["legal_actions"][:] = True
    arrays["actions"] = arrays["actions"] % 2
    ds = Dataset(arrays=arrays, spec=builders.spec(True), quality="hand-built")
    ds.validate()
    batch = Sampler.from_dataset(ds).gather(jnp.arange(10))
    agent = _create(ds.spec)
    target = jax.jit(lambda a, b: a.td_target(b)[0])
    y = np.asarray(target(agent, batch))
    unseen = np.asarray(target(_shift_utility(agent, 2, 100.0), batch))
    seen = np.asarray(target(_shift_utility(agent, 1, 100.0), batch))
    last = np.asarray(batch.last)
    r = np.asarray(batch.rewards)
    print(f"\nTD targets {y}\nwith Q'(., 2) + 100 {unseen}\nwith Q'(., 1) + 100 {seen}")
    # Steps with a next action in the data: the never-taken action 2 does not matter ...
    np.testing.assert_array_equal(unseen[~last], y[~last])
    # ... while a taken one does wherever it is the next action (the check is not vacuous).
    takes_1 = ~last & (np.asarray(batch.next_actions) == 1).any(-1)
    assert takes_1.sum() >= 4
    assert np.all(np.abs(seen[takes_1] - y[takes_1]) > 1.0)
    # Terminals (2, 9) never bootstrap; truncations (3, 7) bootstrap from the policy's expected
    # value at the final observation, whose only legal action in these data is 2.
    for t in (2, 9):
        assert y[t] == unseen[t] == pytest.approx(r[t])
    for t in (3, 7):
        assert abs(unseen[t] - y[t]) > 1.0


def test_in_sample_weights_average_one_over_the_masked_entries():
    x = jnp.array([[0.0, 5.0], [1.0, -1.0], [3.0, 2.0], [-2.0, 0.5]])
    mask = jnp.array([[True, False], [True, True], [False, True], [True, True]])
    w = np.asarray(batch_softmax(x, mask))
    assert np.all(w[~np.asarray(mask)] == 0)
    np.testing.assert_allclose(w.sum(0), np.asarray(mask).sum(0), rtol=1e-6)
    np.testing.assert_allclose(w[1, 0] / w[0, 0], np.exp(1.0), rtol=1e-5)
    assert np.all(np.asarray(batch_softmax(x, jnp.zeros_like(mask))) == 0)  # nothing in-sample


def test_actor_weights_follow_the_advantage_and_gradient_reaches_the_policy():
    sampler = Sampler.from_dataset(builders.dataset(True))
    agent = _create(builders.spec(True))
    batch = sampler.gather(jnp.arange(10))

    @jax.jit
    def parts(agent, batch):
        grads, info = jax.grad(agent.actor_loss, has_aux=True)(agent.params["policy"], batch)
        norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads)))
        return norm, agent.advantages(batch)

    norm, adv = parts(agent, batch)
    assert float(norm) > 1e-4
    assert adv.shape == (10, 2) and np.all(np.isfinite(np.asarray(adv)))


def test_paper_preset_and_target_copy_period():
    config = ICQ.presets["paper"](builders.spec(True))
    assert (config.beta, config.critic_beta, config.target_period) == (0.1, 1000.0, 600)
    with pytest.raises(ValueError, match="beta"):
        ICQConfig(beta=0.0)
    sampler = Sampler.from_dataset(builders.dataset(True))
    agent = _create(builders.spec(True), dataclasses.replace(TINY, target_period=3))
    update = jax.jit(lambda a, b: a.update(b, "train")[0])
    batch = sampler.gather(jnp.arange(10))
    same = []
    for _ in range(3):
        agent = update(agent, batch)
        flat_t = jax.tree.leaves(agent.target["critic"])
        flat_o = jax.tree.leaves(agent.params["critic"])
        same.append(all(bool(jnp.array_equal(t, o)) for t, o in zip(flat_t, flat_o, strict=True)))
    assert same == [False, False, True]  # copied on the 3rd update only
