"""Conformance of every registered algorithm with the agent interface (``macflow.agents.base``).

Each algorithm, with its ``paper`` preset shrunk to tiny networks, must: act within the action
space (legal actions only, bounds respected) in both modes; act on each agent's own observation
only unless it declares itself ``centralised``; and resume from a checkpoint exactly where an
uninterrupted run would be.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from macflow.agents import AGENTS, get_agent
from macflow.data import save
from macflow.train import TrainConfig, load_run, train

import builders

CASES = [
    (algo, discrete)
    for algo in sorted(AGENTS)
    for discrete in (True, False)
    if not (algo == "icq" and not discrete)  # ICQ is discrete-only (its own test checks the error)
]


def tiny(algo: str, spec):
    """The ``paper`` preset with every hidden width 8 and any earlier stage 10 updates long."""
    config = get_agent(algo).presets["paper"](spec)
    small = {}
    for field in dataclasses.fields(config):
        if field.name.endswith("hidden"):
            value = getattr(config, field.name)
            small[field.name] = (8,) if isinstance(value, tuple) else 8
        if field.name == "teacher_steps":
            small[field.name] = 10
        if field.name == "timesteps":
            small[field.name] = 10
        if field.name == "ddim_steps":
            small[field.name] = 5
    return dataclasses.replace(config, **small)


@pytest.mark.parametrize("algo,discrete", CASES)
def test_actions_stay_in_the_action_space_and_decentralised_agents_use_own_observation(
    algo, discrete
):
    spec = builders.spec(discrete)
    cls = get_agent(algo)
    agent = cls.create(jax.random.PRNGKey(0), spec, tiny(algo, spec))
    b, n = 256, spec.num_agents
    key = jax.random.PRNGKey(1)
    obs = jax.random.normal(key, (b, n, spec.obs_dim))
    states = jax.random.normal(jax.random.fold_in(key, 1), (b, spec.state_dim))
    legal = None
    if discrete:
        legal = jax.random.bernoulli(jax.random.fold_in(key, 2), 0.4, (b, n, spec.action_dim))
        legal = legal.at[..., 0].set(legal[..., 0] | ~legal.any(-1))
    for mode in ("sample", "zero"):
        a = np.asarray(agent.act(key, obs, legal, mode, states))
        if discrete:
            assert a.shape == (b, n) and np.issubdtype(a.dtype, np.integer)
            assert np.take_along_axis(np.asarray(legal), a[..., None], -1).all()
        else:
            assert a.shape == (b, n, spec.action_dim)
            assert (a >= np.asarray(spec.action_low)).all()
            assert (a <= np.asarray(spec.action_high)).all()
        if cls.centralised:
            continue
        # A decentralised agent i's action depends on o_i only: not on the state, nor on o_j.
        other = agent.act(key, obs, legal, mode, states + 5.0)
        np.testing.assert_array_equal(a, other)
        moved = agent.act(key, obs.at[:, 1].add(3.0), legal, mode, states)
        np.testing.assert_array_equal(a[:, 0], np.asarray(moved)[:, 0])


def _fit(ds_dir, out, name, algo, config, steps, **kw):
    options = dict(
        dataset=ds_dir, algo=algo, steps=steps, batch_size=16, seeds=(0, 1), log_every=10,
        eval_every=0, checkpoint_every=10, out=out, name=name, progress=False,
    )  # fmt: skip
    return train(TrainConfig(**(options | kw)), config)


# Every algorithm on discrete data in `make test`; the continuous half is `slow` (same loop).
RESUME = [
    pytest.param(algo, discrete, marks=() if discrete else pytest.mark.slow)
    for algo, discrete in CASES
]


@pytest.mark.parametrize("algo,discrete", RESUME)
def test_resume_continues_exactly(tmp_path, algo, discrete):
    ds_dir = tmp_path / "hand"
    save(builders.dataset(discrete), ds_dir)
    config = tiny(algo, builders.spec(discrete))
    straight = _fit(ds_dir, tmp_path, "straight", algo, config, 30)
    first = _fit(ds_dir, tmp_path, "resumed", algo, config, 10)
    second = _fit(ds_dir, tmp_path, "resumed", algo, config, 30, resume=True)
    assert first.path == second.path
    _, _, _, a, step_a = load_run(straight.path)
    _, _, _, b, step_b = load_run(second.path)
    assert step_a == step_b
    jax.tree.map(np.testing.assert_array_equal, a, b)
    rows = (second.path / "metrics.csv").read_text().splitlines()
    assert rows == (straight.path / "metrics.csv").read_text().splitlines()
    assert all(np.isfinite(float(v)) for row in rows[1:] for v in row.split(",")[3:] if v)
    # The seeds are trained side by side, not copies of one another.
    leaves = jax.tree.leaves(b.params)
    assert any(not jnp.array_equal(x[0], x[1]) for x in leaves)
