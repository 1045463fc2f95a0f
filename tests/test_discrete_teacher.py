"""The categorical (posterior) discrete teacher and soft-target distillation: what they compute."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from macflow.agents.base import categorical_kl, masked_logits
from macflow.agents.bc import BC, BCConfig
from macflow.agents.macflow import MACFlow, MACFlowConfig
from macflow.data import Dataset, Sampler
from macflow.loop import make_chunk
from macflow.spec import EnvSpec

import builders

TINY = MACFlowConfig(
    teacher_hidden=(16, 16), student_hidden=(16, 16), critic_hidden=(16, 16), lr=1e-3,
    teacher_steps=40,
)  # fmt: skip


def _random_legal(key, shape):
    legal = jax.random.bernoulli(key, 0.4, shape)
    return legal.at[..., 0].set(True)  # one action always legal


@pytest.mark.parametrize("teacher,form", [("joint", "bayes"), ("per-agent", "bayes"),
                                          ("joint", "plain")])  # fmt: skip
@pytest.mark.parametrize("steps", [1, 10])
def test_posterior_probabilities_sum_to_one_over_legal_actions(teacher, form, steps):
    spec = builders.spec(True)
    config = dataclasses.replace(TINY, teacher=teacher, posterior_form=form, flow_steps=steps)
    agent = MACFlow.create(jax.random.PRNGKey(0), spec, config)
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(1), 4)
    b, n, a = 512, spec.num_agents, spec.action_dim
    legal = _random_legal(k1, (b, n, a))
    noise = jax.random.normal(k2, (b, n, a))
    states = jax.random.normal(k3, (b, spec.state_dim))
    obs = jax.random.normal(k4, (b, n, spec.obs_dim))
    pi = np.asarray(agent.teacher_flow(agent.params["teacher"], noise, states, obs, legal))
    np.testing.assert_allclose(pi.sum(-1), 1.0, rtol=1e-5)
    assert np.all(pi[~np.asarray(legal)] == 0.0)
    if steps == 1:  # at t = 0 an untrained field spreads over the legal actions
        assert np.all(pi[np.asarray(legal)] > 0.0)
    gumbel = jax.random.gumbel(k1, (b, n, a))
    acts = agent.teacher_sample(agent.params["teacher"], noise, states, obs, legal, gumbel)
    assert np.asarray(jnp.take_along_axis(legal, acts[..., None], -1)).all()


def test_bayes_form_with_a_silent_network_is_the_gaussian_path_posterior():
    # f = 0: the logits are the exact per-agent log-likelihood, so pi must be Bayes' rule for
    # x_t = (1 - t) x_0 + t e_a under a uniform prior over the legal actions.
    spec = builders.spec(True)
    agent = MACFlow.create(jax.random.PRNGKey(0), spec, TINY)
    silent = jax.tree.map(jnp.zeros_like, agent.params["teacher"])
    b, n, a = 64, spec.num_agents, spec.action_dim
    legal = _random_legal(jax.random.PRNGKey(1), (b, n, a))
    x = jax.random.normal(jax.random.PRNGKey(2), (b, n, a))
    t = jax.random.uniform(jax.random.PRNGKey(3), (b,), maxval=0.95)
    pi = agent._probs(silent, x, t, jnp.zeros((b, spec.state_dim)), None, legal)
    sd = (1 - t)[:, None, None, None]
    vertices = jnp.eye(a)[None, None] * t[:, None, None, None]  # [B, 1, A (which a), A]
    logdens = -(((x[:, :, None, :] - vertices) / sd) ** 2).sum(-1) / 2  # [B, N, A]
    bayes = jax.nn.softmax(jnp.where(legal, logdens, -jnp.inf))
    np.testing.assert_allclose(pi, bayes, rtol=1e-4, atol=1e-6)


class _BCOnTeacherOutput(BC):
    """BC whose network output is the teacher field's output at t = 0 (same logits)."""

    def _forward(self, params, obs):
        teacher, x0, batch = params
        return teacher._field(
            teacher.params["teacher"], x0, jnp.zeros(x0.shape[:1]), batch.states, obs,
            batch.legal_actions,
        )  # fmt: skip


def test_one_euler_step_is_categorical_bc_on_the_same_output():
    sampler = Sampler.from_dataset(builders.dataset(True))
    spec = builders.spec(True)
    batch = sampler.gather(jnp.arange(10))
    agent = MACFlow.create(jax.random.PRNGKey(0), spec, dataclasses.replace(TINY, flow_steps=1))
    x0 = jax.random.normal(jax.random.PRNGKey(2), (10, spec.num_agents, spec.action_dim))
    teacher_loss, _ = agent._flow_loss_at(agent.params["teacher"], batch, x0, jnp.zeros(10))
    bc = _BCOnTeacherOutput.create(jax.random.PRNGKey(0), spec, BCConfig(hidden=(4,)))
    bc_loss, _ = bc.loss((agent, x0, batch), batch)
    np.testing.assert_allclose(float(teacher_loss), float(bc_loss), rtol=1e-6)
    # Sampling with K = 1 reads exactly those logits: pi = masked softmax at (x0, t = 0).
    out = bc._forward((agent, x0, batch), batch.observations)
    pi = agent.teacher_flow(
        agent.params["teacher"], x0, batch.states, batch.observations, batch.legal_actions
    )
    np.testing.assert_allclose(
        pi, jax.nn.softmax(masked_logits(out, batch.legal_actions)), rtol=1e-6, atol=1e-7
    )


def test_soft_distillation_gradient_vanishes_when_the_student_equals_the_teacher():
    legal = _random_legal(jax.random.PRNGKey(0), (64, 3, 6))
    target = jax.nn.softmax(masked_logits(jax.random.normal(jax.random.PRNGKey(1), legal.shape),
                                          legal))  # fmt: skip
    grad = jax.grad(lambda z: categorical_kl(target, masked_logits(z, legal)).sum())
    equal = jnp.where(legal, jnp.log(target) + 0.7, 0.0)  # equal up to a shift of the logits
    np.testing.assert_allclose(grad(equal), 0.0, atol=1e-6)
    assert float(jnp.abs(grad(jnp.zeros(legal.shape))).max()) > 1e-2
    np.testing.assert_allclose(categorical_kl(target, masked_logits(equal, legal)), 0.0, atol=1e-5)

    # The same through the actor loss: students whose softmax is the cached target get no gradient.
    sampler = Sampler.from_dataset(builders.dataset(True))
    spec = builders.spec(True)
    agent = MACFlow.create(
        jax.random.PRNGKey(0), spec, dataclasses.replace(TINY, q_weight=0.0, teacher_cache=3)
    )
    rows = jnp.arange(sampler.num_transitions)
    b = sampler.gather(rows)
    noise = jax.vmap(lambda r: agent._cache_noise(agent.cache_key, r)[0])(rows)  # [R, M, N, A]
    logits = jax.vmap(
        lambda z: agent._student_out(agent.params["student"], b.observations, z), in_axes=1,
        out_axes=1,
    )(noise)  # fmt: skip
    own = jax.nn.softmax(masked_logits(logits, b.legal_actions[:, None]))
    batch = sampler.gather(jnp.array([0, 3, 5, 8]))
    key = jax.random.PRNGKey(4)
    for targets, vanishes in ((own, True), (jnp.roll(own, 1, axis=-1), False)):
        aux = {"key": agent.cache_key, "targets": targets.astype(jnp.float16)}
        grads, info = jax.grad(agent.actor_loss, has_aux=True)(
            agent.params["student"], batch, key, aux
        )
        norm = float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads))))
        assert (norm < 1e-3) == vanishes, norm  # float16 storage leaves a tiny residue


def test_cached_soft_targets_are_the_teachers_probabilities_for_the_same_noise():
    sampler = Sampler.from_dataset(builders.dataset(True))
    spec = builders.spec(True)
    agent = MACFlow.create(jax.random.PRNGKey(0), spec, dataclasses.replace(TINY, teacher_cache=2))
    aux = agent.prepare(sampler, "policy")
    assert aux["targets"].dtype == jnp.float16
    assert aux["targets"].shape == (sampler.num_transitions, 2, spec.num_agents, spec.action_dim)
    b = sampler.gather(jnp.arange(sampler.num_transitions))
    for j in range(2):
        noise = jax.vmap(lambda r, j=j: agent._cache_noise(agent.cache_key, r)[0][j])(b.index)
        pi = agent.teacher_flow(
            agent.params["teacher"], noise, b.states, b.observations, b.legal_actions
        )
        np.testing.assert_allclose(aux["targets"][:, j], pi, atol=1e-3)


def _coordination_data(rows: int = 4000) -> Dataset:
    """One-step episodes of a 2-agent, 3-action game whose data play only (0, 0) and (2, 2)."""
    spec = EnvSpec("test/pairs", 2, 1, 1, 3, discrete=True, episode_limit=1)
    actions = np.repeat(np.array([[0, 0], [2, 2]], np.int32), rows // 2, axis=0)
    arrays = {
        "observations": np.ones((rows, 2, 1), np.float32),
        "states": np.ones((rows, 1), np.float32),
        "actions": actions,
        "legal_actions": np.ones((rows, 2, 3), bool),
        "rewards": np.zeros(rows, np.float32),
        "terminals": np.ones(rows, bool),
        "truncations": np.zeros(rows, bool),
        "final_observations": np.ones((rows, 2, 1), np.float32),
        "final_states": np.ones((rows, 1), np.float32),
        "final_legal_actions": np.ones((rows, 2, 3), bool),
    }
    return Dataset(arrays=arrays, spec=spec, provenance={"method": "test"})


def _fit(agent_cls, config, ds, stage, steps):
    """``steps`` updates of one stage, seed 0, by the training loop's own jitted program."""
    keys = jnp.stack([jax.random.PRNGKey(0)])
    agents = jax.vmap(lambda k: agent_cls.create(k, ds.spec, config))(keys)
    sampler = Sampler.from_dataset(ds)
    agents, _, _ = make_chunk(128)(agents, None, sampler, keys, 0, stage, steps)
    return jax.tree.map(lambda x: x[0], agents)


@pytest.mark.parametrize("form", ["bayes", "plain"])
def test_joint_teacher_reproduces_coordinated_pairs_that_independent_bc_splits(form):
    ds = _coordination_data()
    n = 4000
    obs, states = jnp.ones((n, 2, 1)), jnp.ones((n, 1))
    legal = jnp.ones((n, 2, 3), bool)
    config = dataclasses.replace(
        TINY, teacher_hidden=(64, 64), teacher_steps=1500, posterior_form=form
    )
    teacher = _fit(MACFlow, config, ds, "teacher", 1500)
    joint = np.asarray(teacher.act_teacher(jax.random.PRNGKey(1), obs, states, legal, "sample"))
    bc = _fit(BC, BCConfig(hidden=(32, 32), lr=1e-3), ds, "bc", 600)
    independent = np.asarray(bc.act(jax.random.PRNGKey(1), obs, legal, "sample"))
    mis_joint = np.mean(joint[:, 0] != joint[:, 1])
    mis_bc = np.mean(independent[:, 0] != independent[:, 1])
    share_00 = np.mean((joint[:, 0] == 0) & (joint[:, 1] == 0))
    print(
        f"\nmiscoordinated samples: joint posterior teacher ({form}) {mis_joint:.3f}, per-agent BC "
        f"{mis_bc:.3f}; teacher (0,0) share {share_00:.3f}"
    )
    assert mis_joint <= 0.05
    assert 0.4 <= share_00 <= 0.6  # both modes kept, in the data's proportions
    assert 0.4 <= mis_bc <= 0.6  # a product of marginals splits the pairs half the time


def test_cql_term_is_the_logsumexp_gap_of_the_utilities():
    sampler = Sampler.from_dataset(builders.dataset(True))
    spec = builders.spec(True)
    batch = sampler.gather(jnp.arange(10))
    key = jax.random.PRNGKey(3)
    plain = MACFlow.create(jax.random.PRNGKey(0), spec, TINY)
    conservative = plain.replace(config=dataclasses.replace(TINY, cql=0.5))
    cm = (plain.params["critic"], plain.params["mixer"])
    td, _ = plain.critic_loss(cm, batch, key)
    total, info = conservative.critic_loss(cm, batch, key)
    q = plain._critic().apply(plain.params["critic"], batch.observations)  # [H, B, N, A]
    lse = jax.scipy.special.logsumexp(jnp.where(batch.legal_actions, q, -jnp.inf), axis=-1)
    data = jnp.take_along_axis(q, batch.actions[None, ..., None], -1)[..., 0]
    gap = float((lse - data).mean())
    np.testing.assert_allclose(float(info["critic/cql_gap"]), gap, rtol=1e-5)
    np.testing.assert_allclose(float(total), float(td) + 0.5 * gap, rtol=1e-5)


def _one_action_data(rows: int = 2000) -> Dataset:
    """One-step episodes of 2 agents with 3 actions in which the data always play (0, 0) for a
    reward of 1: the other actions' utilities are never trained by the TD loss."""
    ds = _coordination_data(rows)
    arrays = dict(ds.arrays)
    arrays["actions"] = np.zeros((rows, 2), np.int32)
    arrays["rewards"] = np.ones(rows, np.float32)
    return dataclasses.replace(ds, arrays=arrays)


def test_conservative_utilities_keep_unseen_actions_below_the_datas():
    ds = _one_action_data()
    config = dataclasses.replace(
        TINY, critic_hidden=(32, 32), teacher_steps=50, alpha=0.1, cql=1.0, q_agg="min"
    )
    keys = jnp.stack([jax.random.PRNGKey(0)])
    agents = jax.vmap(lambda k: MACFlow.create(k, ds.spec, config))(keys)
    sampler = Sampler.from_dataset(ds)
    chunk = make_chunk(128)
    agents, _, _ = chunk(agents, None, sampler, keys, 0, "teacher", 50)
    aux = jax.vmap(lambda a: a.prepare(sampler, "policy"))(agents)
    agents, _, _ = chunk(agents, aux, sampler, keys, 50, "policy", 800)
    agent = jax.tree.map(lambda x: x[0], agents)
    q = np.asarray(agent._critic().apply(agent.target["critic"], jnp.ones((1, 2, 1)))).mean(0)[0]
    print(f"\nutilities with cql (agents x actions):\n{np.round(q, 3)}")
    assert np.all(q[:, 1:] < q[:, :1] - 0.2)  # every unseen action well below the data's
    acts = agent.act(jax.random.PRNGKey(1), jnp.ones((2000, 2, 1)), None, "sample")
    assert np.mean(np.asarray(acts) == 0) > 0.95  # the students stay on the data's action
