"""Action spaces (``macflow.agents.actions``) and every registered agent's ``supports``.

For every agent of ``macflow.agents.AGENTS`` on a continuous toy task, a discrete one and an
SMAX-like discrete task with sparse legal-action masks: ``supports(spec)`` is None exactly when
``create`` / ``update`` / ``act`` work (an unsupported task raises ``ValueError`` with the very
reason ``supports`` gives), and acting gives actions of the task's shape, within its bounds and,
for discrete tasks, always legal under the mask.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_agents import tiny

from macflow.agents import AGENTS, get_agent
from macflow.agents.actions import Continuous, Discrete, action_space
from macflow.data.sampler import Batch
from macflow.envs import make_env
from macflow.spec import EnvSpec

SMAX_LIKE = EnvSpec("test/smax-like", 3, 6, 9, 7, discrete=True, episode_limit=20)
SPECS = {
    "intensity": make_env("toy/intensity").spec,
    "coordination": make_env("toy/coordination").spec,
    "smax-like": SMAX_LIKE,
}
B = 8


def legal_masks(key, spec: EnvSpec, shape):
    """Random masks with about a third of the actions legal, at least one per agent."""
    legal = jax.random.bernoulli(key, 0.3, (*shape, spec.num_agents, spec.action_dim))
    return legal.at[..., 0].set(legal[..., 0] | ~legal.any(-1))


def random_batch(key, spec: EnvSpec) -> Batch:
    """A batch of ``B`` transitions whose actions are legal under their masks."""
    k = iter(jax.random.split(key, 8))
    n = spec.num_agents
    obs = lambda: jax.random.normal(next(k), (B, n, spec.obs_dim))  # noqa: E731
    states = lambda: jax.random.normal(next(k), (B, spec.state_dim))  # noqa: E731
    if spec.discrete:
        legal, next_legal = legal_masks(next(k), spec, (B,)), legal_masks(next(k), spec, (B,))
        actions = jax.random.categorical(next(k), jnp.where(legal, 0.0, -jnp.inf))
    else:
        legal = next_legal = None
        low, high = np.asarray(spec.action_low), np.asarray(spec.action_high)
        actions = jax.random.uniform(next(k), (B, n, spec.action_dim), minval=low, maxval=high)
    last = jnp.arange(B) % 4 == 3
    return Batch(
        observations=obs(), states=states(), actions=actions, legal_actions=legal,
        rewards=jnp.linspace(0.0, 1.0, B), terminals=last, truncations=jnp.zeros(B, bool),
        bootstrap=(~last).astype(jnp.float32), next_observations=obs(), next_states=states(),
        next_legal_actions=next_legal, next_actions=actions, last=last, valid=jnp.ones(B),
        index=jnp.arange(B, dtype=jnp.int32),
    )  # fmt: skip


@pytest.mark.parametrize("task", sorted(SPECS))
@pytest.mark.parametrize("algo", sorted(AGENTS))
def test_supports_agrees_with_create_update_and_act(algo, task):
    spec, cls = SPECS[task], get_agent(algo)
    reason = cls.supports(spec)
    if reason is not None:
        assert isinstance(reason, str) and reason and "\n" not in reason
        with pytest.raises(ValueError, match=re.escape(reason)):
            cls.presets["paper"](spec)
        with pytest.raises(ValueError, match=re.escape(reason)):
            cls.create(jax.random.PRNGKey(0), spec, cls.Config())
        return
    config = tiny(algo, spec)
    agent = cls.create(jax.random.PRNGKey(0), spec, config)
    batch = random_batch(jax.random.PRNGKey(1), spec)
    for stage in cls.stages(config, 1):
        agent, info = agent.update(batch, stage.name)
        assert all(np.isfinite(np.asarray(v)).all() for v in info.values()), (stage.name, info)
    key = jax.random.PRNGKey(2)
    legal = legal_masks(jax.random.fold_in(key, 1), spec, (B,)) if spec.discrete else None
    for mode in ("sample", "zero"):
        a = np.asarray(agent.act(key, batch.observations, legal, mode, batch.states))
        assert a.shape == (B, *spec.action_shape)
        if spec.discrete:
            assert np.issubdtype(a.dtype, np.integer)
            assert np.take_along_axis(np.asarray(legal), a[..., None], -1).all()
        else:
            assert (a >= np.asarray(spec.action_low)).all()
            assert (a <= np.asarray(spec.action_high)).all()


def test_every_agent_supports_continuous_and_discrete_tasks_except_icq():
    unsupported = {
        (algo, task)
        for algo in AGENTS
        for task, spec in SPECS.items()
        if get_agent(algo).supports(spec) is not None
    }
    assert unsupported == {("icq", "intensity")}


def test_action_space_is_static_and_picks_the_kind():
    box = action_space(EnvSpec("t", 2, 3, 4, 2, False, 5, (-1.0, -2.0), (1.0, 4.0)))
    assert box == Continuous(2, (-1.0, -2.0), (1.0, 4.0)) and hash(box) == hash(box)
    assert (box.size, box.policy_size, box.critic((8,), 2).num_actions) == (2, 4, None)
    choice = action_space(SMAX_LIKE)
    assert choice == Discrete(7) and (choice.size, choice.policy_size) == (7, 7)
    assert choice.critic((8,), 1).num_actions == 7 and choice.critic_input(jnp.zeros(3)) is None
    # Usable as a static argument: rebuilt or passed, it compiles once.
    f = jax.jit(lambda space, x: space.squash(x), static_argnums=0)
    np.testing.assert_array_equal(f(choice, jnp.ones(3)), jnp.ones(3))


def test_continuous_units_round_trip_and_stay_in_bounds():
    box = Continuous(2, (-1.0, -2.0), (1.0, 4.0))
    env = jnp.array([[-1.0, -2.0], [0.0, 1.0], [1.0, 4.0]])
    np.testing.assert_allclose(box.from_env(env), [[-1, -1], [0, 0], [1, 1]], atol=1e-6)
    np.testing.assert_allclose(box.to_env(box.from_env(env)), env, atol=1e-6)
    np.testing.assert_array_equal(box.to_env(jnp.array([[-3.0, 3.0]])), [[-1.0, 4.0]])
    assert box.vectors(env) is env


def test_discrete_acting_decoding_and_sampling_are_always_legal():
    space, key = Discrete(7), jax.random.PRNGKey(0)
    legal = legal_masks(key, SMAX_LIKE, (64,))
    # Logits that favour illegal actions: the mask must still win.
    logits = jnp.where(legal, 0.0, 50.0) + jax.random.normal(key, legal.shape)
    for a in (
        space.act(logits, legal, "zero", key),
        space.act(logits, legal, "sample", key),
        space.sample(logits, legal, "sample", key),
        space.decode(logits, legal),
    ):
        assert np.take_along_axis(np.asarray(legal), np.asarray(a)[..., None], -1).all()
    probs = space.relax(logits, legal)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    assert (np.asarray(probs)[~np.asarray(legal)] == 0).all()
    np.testing.assert_array_equal(
        space.vectors(jnp.array([2]), off=-1.0)[0], [-1, -1, 1] + [-1] * 4
    )


def test_expected_utility_is_the_policy_weighted_value():
    space = Discrete(3)
    critic = space.critic((8,), 2)
    obs = jax.random.normal(jax.random.PRNGKey(0), (4, 2, 5))
    params = critic.init(jax.random.PRNGKey(1), obs)
    q = critic.apply(params, obs)  # [H, B, N, A]
    one_hot = space.vectors(jnp.full((4, 2), 1))
    np.testing.assert_allclose(space.utility(critic, params, obs, one_hot, 0), q[0, ..., 1])
    uniform = jnp.full((4, 2, 3), 1 / 3)
    np.testing.assert_allclose(
        space.utility(critic, params, obs, uniform), q.mean(0).mean(-1), rtol=1e-5
    )
