"""Flow BC (MAC-Flow without the Q term): it imitates, trains no critic, and refuses a Q weight."""

import dataclasses

import jax
import numpy as np
import pytest

from macflow.agents import get_agent
from macflow.agents.flow_bc import FlowBC, FlowBCConfig
from macflow.train import load_run

from baselines import assert_trains_and_evaluates, episode_returns, fit

TINY = FlowBCConfig(
    teacher_hidden=(32, 32), student_hidden=(32, 32), critic_hidden=(8,), lr=1e-3,
    teacher_steps=1500, alpha=0.03,
)  # fmt: skip


def test_coordination_students_imitate_each_agents_marginal(datasets, tmp_path):
    run = fit(datasets["coord"], tmp_path, "flow-bc", "flow-bc", TINY, 1500, episodes=4000)
    share = float(np.mean(episode_returns(run, "flow-bc") == 2.0))
    print(f"\ncoordination, flow-BC students choose (1,1): {share:.3f}")
    # Each agent plays 1 with its data marginal 0.525; independent agents meet at (1,1) with
    # probability 0.525^2 = 0.276 (the joint data: 0.05); MAC-Flow's Q term reaches >= 0.9.
    assert share == pytest.approx(0.525**2, abs=0.03)
    # No critic is trained: its parameters are still the initial ones.
    _, _, _, agents, _ = load_run(run.path)
    fresh = jax.vmap(lambda k: FlowBC.create(k, agents.spec, TINY))(
        jax.numpy.stack([jax.random.PRNGKey(s) for s in (0, 1)])
    )
    jax.tree.map(np.testing.assert_array_equal, agents.params["critic"], fresh.params["critic"])
    header = (run.path / "metrics.csv").read_text().splitlines()[0]
    assert "actor/distill" in header and "critic/td_loss" not in header


@pytest.mark.parametrize("name", ["spread", "3m"])
def test_trains_and_evaluates_on_real_data(datasets, tmp_path, name):
    config = dataclasses.replace(TINY, teacher_hidden=(16,), student_hidden=(16,), teacher_steps=20)
    run = fit(datasets[name], tmp_path, name, "flow-bc", config, 20, log_every=10, episodes=4)
    assert_trains_and_evaluates(run)


def test_a_q_weight_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="--algo macflow"):
        FlowBCConfig(q_weight=1.0)
    spec = get_agent("macflow").presets  # the same presets, with the Q term off
    assert set(FlowBC.presets) == set(spec)
