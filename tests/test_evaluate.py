"""Evaluation metrics: normalised score from reference returns, win rate from info["won"]."""

import dataclasses

import jax
import numpy as np
import pytest

from macflow.agents.macflow import MACFlow, MACFlowConfig
from macflow.envs import make_env
from macflow.envs.toys import Coordination
from macflow.evaluate import evaluate

TINY = MACFlowConfig(teacher_hidden=(8,), student_hidden=(8,), critic_hidden=(8,))


@dataclasses.dataclass(frozen=True)
class CoordinationWithWins(Coordination):
    """toy/coordination reporting the optimum as a win, as SMAX reports battles won."""

    def step(self, key, state, actions):
        state, ts = super().step(key, state, actions)
        return state, ts.replace(info={"won": ts.reward == 2.0})

    def reset(self, key):
        state, ts = super().reset(key)
        return state, ts.replace(info={"won": jax.numpy.asarray(False)})


def _agents(spec, seeds=2):
    keys = jax.numpy.stack([jax.random.PRNGKey(s) for s in range(seeds)])
    return jax.vmap(lambda k: MACFlow.create(k, spec, TINY))(keys)


def test_normalised_score_and_win_rate():
    env = CoordinationWithWins()
    agents = _agents(env.spec)
    res = evaluate(
        env, agents, jax.random.PRNGKey(0), 500, "sample", {"random": 0.0, "expert": 2.0}
    )
    assert len(res) == 2
    for r in res:
        returns = np.asarray(r["returns"])
        assert len(returns) == 500
        assert r["normalised_score"] == pytest.approx(100 * returns.mean() / 2.0)
        assert r["win_rate"] == pytest.approx(np.mean(returns == 2.0))


def test_chunked_evaluation_reuses_one_program_and_keeps_the_count():
    env = make_env("toy/xor")
    agents = _agents(env.spec, seeds=1)
    whole = evaluate(env, agents, jax.random.PRNGKey(0), 50, "sample", chunk=20)
    assert len(whole[0]["returns"]) == 50
    assert "normalised_score" not in whole[0] and "win_rate" not in whole[0]


@pytest.mark.parametrize("episodes", [0, -1])
def test_evaluating_fewer_than_one_episode_is_refused(episodes):
    env = make_env("toy/xor")
    with pytest.raises(ValueError, match="episodes must be >= 1"):
        evaluate(env, _agents(env.spec, seeds=1), jax.random.PRNGKey(0), episodes)
