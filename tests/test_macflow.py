"""MAC-Flow: what it must learn on the toy games, and the mechanics that make it correct."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from macflow.agents.macflow import MACFlow, MACFlowConfig
from macflow.data import Sampler, save
from macflow.data.collect import collect
from macflow.envs import make_env
from macflow.envs.toys import CoordinationData, XorData
from macflow.nn import QMixer
from macflow.train import TrainConfig, load_run, train

import builders

TINY = MACFlowConfig(
    teacher_hidden=(16, 16), student_hidden=(16, 16), critic_hidden=(16, 16), lr=1e-3,
    teacher_steps=40,
)  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    save(collect(make_env("toy/coordination"), CoordinationData(), 10_000), root / "coord")
    save(collect(make_env("toy/xor"), XorData(), 10_000), root / "xor")
    return root


def fit(data_dir, out, name, config, steps, seeds=(0, 1), episodes=4000, **kw):
    options = dict(
        dataset=data_dir, steps=steps, batch_size=128, seeds=seeds, log_every=500, eval_every=0,
        eval_episodes=episodes, final_eval_factor=1, checkpoint_every=0, out=out, name=name,
        progress=False,
    )  # fmt: skip
    return train(TrainConfig(**(options | kw)), config)


def optimum_share(run) -> float:
    runs = json.loads((run.path / "marl_eval.json").read_text())["toy"]["coordination"]["macflow"]
    return float(
        np.mean(
            [np.mean(np.asarray(r["absolute_metrics"]["return"]) == 2.0) for r in runs.values()]
        )
    )


COORD = dataclasses.replace(
    TINY, teacher_hidden=(32, 32), student_hidden=(32, 32), critic_hidden=(32, 32),
    alpha=0.03, teacher_steps=1500,
)  # fmt: skip


def test_coordination_students_choose_the_rare_optimum(data, tmp_path):
    run = fit(data / "coord", tmp_path, "q", COORD, 1500)
    share = optimum_share(run)
    print(f"\ncoordination, MAC-Flow students choose (1,1): {share:.3f}")
    assert share >= 0.90  # sampled noise, decentralised students
    for r in run.final["modes"]["zero"]:
        assert r["return_mean"] == 2.0


XOR = dataclasses.replace(
    TINY, teacher_hidden=(64, 64), student_hidden=(64, 64), critic_hidden=(64, 64),
    teacher_steps=2000,
)  # fmt: skip


def _xor_actions(run, seed_index, teacher):
    _, _, _, agents, _ = load_run(run.path)
    agent = jax.tree.map(lambda x: x[seed_index], agents)
    obs, key = jnp.ones((5000, 2, 1)), jax.random.PRNGKey(7)
    if teacher:
        return np.asarray(agent.act_teacher(key, obs, jnp.ones((5000, 2)), None))[..., 0]
    return np.asarray(agent.act(key, obs, None, "sample"))[..., 0]


def _agree(a):
    return float(np.mean(np.sign(a[:, 0]) == np.sign(a[:, 1])))


def test_xor_joint_teacher_keeps_the_modes_and_only_shared_noise_students_do(data, tmp_path):
    independent = fit(data / "xor", tmp_path, "ind", XOR, 2000, episodes=2000)
    shared = fit(
        data / "xor",
        tmp_path,
        "shared",
        dataclasses.replace(XOR, shared_noise=True),
        2000,
        episodes=2000,
    )
    for s in range(2):
        t, ind, sh = (_xor_actions(independent, s, True), _xor_actions(independent, s, False),
                      _xor_actions(shared, s, False))  # fmt: skip
        print(
            f"\nxor seed {s}: sign agreement teacher {_agree(t):.3f}, independent students "
            f"{_agree(ind):.3f} (mean |a| {np.abs(ind).mean():.2f}), shared-noise students "
            f"{_agree(sh):.3f} (mean |a| {np.abs(sh).mean():.2f}, share of a_1 > 0 "
            f"{np.mean(sh[:, 0] > 0):.2f})"
        )
        assert _agree(t) < 0.10
        # The paper's failure mode: independent noise cannot pick a mode jointly.
        assert _agree(ind) > 0.30 or np.abs(ind).mean() < 0.3
        assert _agree(sh) < 0.10
        assert 0.3 < np.mean(sh[:, 0] > 0) < 0.7  # both modes kept
        assert np.abs(sh).mean() > 0.8  # not collapsed toward 0
    # The environment's own evaluation agrees: reward 1 = signs differ.
    assert min(r["return_mean"] for r in shared.final["modes"]["sample"]) > 0.9
    assert max(r["return_mean"] for r in independent.final["modes"]["sample"]) < 0.7


# --- mechanics -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hand():
    return Sampler.from_dataset(builders.dataset(True)), builders.spec(True)


def test_discrete_q_term_sends_gradient_to_the_students(hand):
    sampler, spec = hand
    batch = sampler.gather(jnp.arange(10))
    agent = MACFlow.create(jax.random.PRNGKey(0), spec, dataclasses.replace(TINY, alpha=0.0))
    key = jax.random.PRNGKey(1)

    def norm(a):
        grads, _ = jax.grad(a.actor_loss, has_aux=True)(a.params["student"], batch, key)
        return float(optax_global_norm(grads))

    assert norm(agent) > 1e-4  # the Q term alone moves the students
    assert norm(agent.replace(config=dataclasses.replace(agent.config, q_weight=0.0))) == 0.0


def optax_global_norm(tree):
    return jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(tree)))


def test_no_illegal_action_is_ever_taken(hand):
    _, spec = hand
    agent = MACFlow.create(jax.random.PRNGKey(0), spec, TINY)
    key = jax.random.PRNGKey(3)
    legal = jax.random.bernoulli(key, 0.3, (4096, spec.num_agents, spec.action_dim))
    legal = legal.at[..., 0].set(legal[..., 0] | ~legal.any(-1))  # at least one legal
    obs = jax.random.normal(key, (4096, spec.num_agents, spec.obs_dim))
    states = jax.random.normal(key, (4096, spec.state_dim))

    def legal_of(actions):
        return np.asarray(jnp.take_along_axis(legal, actions[..., None], -1)).all()

    for mode in ("sample", "zero"):
        assert legal_of(agent.act(key, obs, legal, mode))
        assert legal_of(agent.act_teacher(key, obs, states, legal, mode))
    # The critic's next action (TD target) and the students in training use the same masked policy.
    assert legal_of(agent._policy(agent.params["student"], key, obs, legal, "sample"))


def test_td_target_bootstraps_after_truncation_and_not_after_terminal(hand):
    sampler, spec = hand
    agent = MACFlow.create(jax.random.PRNGKey(0), spec, TINY)
    batch = sampler.gather(jnp.arange(10))
    key = jax.random.PRNGKey(5)
    y = np.asarray(agent.td_target(batch, key))
    r = np.asarray(batch.rewards)
    a_next = agent._policy(
        agent.params["student"], key, batch.next_observations, batch.next_legal_actions, "sample"
    )
    q_next = (
        agent._utilities(agent.target["critic"], batch.next_observations, a_next).sum(-1).mean(0)
    )
    for t in range(10):
        if t in (2, 9):  # terminal: no bootstrap
            assert y[t] == pytest.approx(r[t])
        else:  # truncation (3, 7) and mid-episode: r + gamma * Q'(next), next = final obs at 3, 7
            assert y[t] == pytest.approx(r[t] + 0.99 * float(q_next[t]), rel=1e-5)
            assert abs(y[t] - r[t]) > 1e-6


def test_students_are_decentralised():
    spec = builders.spec(False)
    for shared in (False, True):
        agent = MACFlow.create(
            jax.random.PRNGKey(0), spec, dataclasses.replace(TINY, shared_noise=shared)
        )
        obs = jax.random.normal(jax.random.PRNGKey(1), (64, spec.num_agents, spec.obs_dim))
        moved = obs.at[:, 1].add(3.0)  # change only agent 1's observation
        for mode in ("sample", "zero"):
            a = agent.act(jax.random.PRNGKey(2), obs, None, mode)
            b = agent.act(jax.random.PRNGKey(2), moved, None, mode)
            np.testing.assert_array_equal(a[:, 0], b[:, 0])
            assert not np.allclose(a[:, 1], b[:, 1])


def test_joint_teacher_couples_agents_and_per_agent_teacher_does_not():
    spec = builders.spec(False)
    x = jax.random.normal(jax.random.PRNGKey(0), (8, spec.num_agents, spec.action_dim))
    moved = x.at[:, 1].add(1.0)
    t, s = jnp.full((8,), 0.3), jnp.zeros((8, spec.state_dim))
    obs = jnp.zeros((8, spec.num_agents, spec.obs_dim))
    for kind, coupled in (("joint", True), ("per-agent", False)):
        agent = MACFlow.create(jax.random.PRNGKey(0), spec, dataclasses.replace(TINY, teacher=kind))
        v = agent._teacher().apply(agent.params["teacher"], x, t, s, obs)
        w = agent._teacher().apply(agent.params["teacher"], moved, t, s, obs)
        assert (not np.allclose(v[:, 0], w[:, 0])) == coupled


def test_qmix_is_monotone_in_every_agent_utility():
    mixer = QMixer()
    q, s = (
        jax.random.normal(jax.random.PRNGKey(0), (32, 3)),
        jax.random.normal(jax.random.PRNGKey(1), (32, 5)),
    )
    params = mixer.init(jax.random.PRNGKey(2), q, s)
    grads = jax.vmap(jax.grad(lambda qi, si: mixer.apply(params, qi, si)))(q, s)
    assert np.all(np.asarray(grads) >= 0)


@pytest.mark.parametrize(
    "preset,mixer,discrete",
    [
        ("paper", "qmix", True),
        ("paper", "vdn", False),
        ("reference", None, True),
        ("reference", None, False),
    ],
)
def test_presets_and_mixers_train_on_both_action_kinds(tmp_path, preset, mixer, discrete):
    ds_dir = tmp_path / "hand"
    save(builders.dataset(discrete), ds_dir)
    base = MACFlow.presets[preset](builders.spec(discrete))
    small = dict(teacher_hidden=(8,), student_hidden=(8,), critic_hidden=(8,), teacher_steps=10)
    config = dataclasses.replace(base, **small, mixer=mixer or base.mixer)
    run = fit(ds_dir, tmp_path, "run", config, 20, log_every=10)
    assert run.final is None  # a hand-built task macflow cannot run: trained, not evaluated
    rows = (run.path / "metrics.csv").read_text().splitlines()
    chunks = sum(-(-s.steps // 10) for s in MACFlow.stages(config, 20))
    assert len(rows) == 1 + 2 * chunks
    assert all(np.isfinite(float(v)) for row in rows[1:] for v in row.split(",")[3:] if v)


def test_resume_continues_exactly(tmp_path):
    ds_dir = tmp_path / "coord"
    save(collect(make_env("toy/coordination"), CoordinationData(), 500), ds_dir)
    config = dataclasses.replace(TINY, teacher_steps=40)
    straight = fit(ds_dir, tmp_path, "straight", config, 60, log_every=20, episodes=8)
    first = fit(ds_dir, tmp_path, "resumed", config, 20, log_every=20, episodes=8)
    assert load_run(first.path)[4] == 60  # 40 teacher + 20 policy updates
    second = fit(ds_dir, tmp_path, "resumed", config, 60, log_every=20, episodes=8, resume=True)
    _, _, _, a, step_a = load_run(straight.path)
    _, _, _, b, step_b = load_run(second.path)
    assert step_a == step_b == 100
    jax.tree.map(np.testing.assert_array_equal, a, b)
    metrics = (second.path / "metrics.csv").read_text().splitlines()
    assert metrics == (straight.path / "metrics.csv").read_text().splitlines()


@pytest.mark.parametrize("discrete", [True, False])
@pytest.mark.parametrize("shared", [False, True])
def test_one_agent_acting_alone_matches_its_slice_of_the_team(discrete, shared):
    spec = builders.spec(discrete)
    agent = MACFlow.create(
        jax.random.PRNGKey(0), spec, dataclasses.replace(TINY, shared_noise=shared)
    )
    obs = jax.random.normal(jax.random.PRNGKey(1), (1, spec.num_agents, spec.obs_dim))
    legal = jnp.ones((1, spec.num_agents, spec.action_dim), bool) if discrete else None
    for mode in ("sample", "zero"):
        for key in jax.random.split(jax.random.PRNGKey(2), 4):
            team = agent.act(key, obs, legal, mode)[0]
            for i in range(spec.num_agents):
                alone = agent.act_agent(
                    key, i, obs[0, i], None if legal is None else legal[0, i], mode
                )
                np.testing.assert_allclose(alone, team[i], rtol=1e-5, atol=1e-6)


def _utility_gaps(run) -> np.ndarray:
    """``Q_i(1) - Q_i(0)`` of every seed and agent ``[S, N]`` (critic heads averaged), read from
    the target critic: its Polyak average smooths out the online critic's SGD noise."""
    _, _, _, agents, _ = load_run(run.path)
    q = jax.vmap(lambda a: a._critic().apply(a.target["critic"], jnp.ones((1, 2, 1))))(agents)
    q = np.asarray(q).mean(axis=1)[:, 0]  # [S, N, A]
    return q[..., 1] - q[..., 0]


def test_independent_mixer_regresses_the_team_reward_per_agent(data, tmp_path):
    # Data: (0,1), (1,0) at 47.5% each, (1,1) at 5%; r = a_1 + a_2. Independent utilities learn
    # E[r | a_i]: 0.575 / 0.525 = 1.095 for a_i = 1 and 1 for a_i = 0, a gap of 0.095. VDN's sum
    # fits r itself, so its gap is the additive payoff's 1.
    config = dataclasses.replace(COORD, teacher_steps=40)
    gaps = {}
    for mixer in ("independent", "vdn"):
        run = fit(data / "coord", tmp_path, mixer, dataclasses.replace(config, mixer=mixer), 1500,
                  seeds=(0, 1), episodes=16)  # fmt: skip
        assert np.isfinite(run.final["modes"]["sample"][0]["return_mean"])
        gaps[mixer] = _utility_gaps(run)
    print(f"\nQ_i(1) - Q_i(0): independent {gaps['independent']}, vdn {gaps['vdn']}")
    np.testing.assert_allclose(gaps["independent"], 0.575 / 0.525 - 1, atol=0.05)
    np.testing.assert_allclose(gaps["vdn"], 1.0, atol=0.15)


def test_independent_td_target_is_each_agents_own_bootstrap(hand):
    sampler, spec = hand
    config = dataclasses.replace(TINY, mixer="independent")
    agent = MACFlow.create(jax.random.PRNGKey(0), spec, config)
    batch = sampler.gather(jnp.arange(10))
    key = jax.random.PRNGKey(5)
    y = np.asarray(agent.td_target(batch, key))
    a_next = agent._policy(
        agent.params["student"], key, batch.next_observations, batch.next_legal_actions, "sample"
    )
    q_next = agent._utilities(agent.target["critic"], batch.next_observations, a_next).mean(0)
    r, boot = np.asarray(batch.rewards)[:, None], np.asarray(batch.bootstrap)[:, None]
    assert y.shape == (10, spec.num_agents)  # one target per agent, no Q_tot
    np.testing.assert_allclose(y, r + 0.99 * boot * np.asarray(q_next), rtol=1e-5, atol=1e-6)
