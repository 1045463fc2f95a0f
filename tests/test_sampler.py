"""The device-resident sampler on a hand-built dataset whose values name their step.

Episodes (see builders.py): steps 0-2 (terminal), 3 (truncation), 4-7 (truncation), 8-9 (terminal).
"""

import jax
import numpy as np
import pytest

from macflow.data import Sampler

import builders

ENDS = {2: 0, 3: 1, 7: 2, 9: 3}  # last step -> episode
TERMINAL_ENDS = {2, 9}
EPISODE = np.array([0, 0, 0, 1, 2, 2, 2, 2, 3, 3])


def _step_of(obs):
    """Observation rows encode 10 * t + agent; finals encode -(10 * (e + 1) + agent)."""
    return np.asarray(obs)[..., 0, 0] / 10


@pytest.fixture(scope="module", params=[True, False], ids=["discrete", "continuous"])
def sampler(request):
    return Sampler.from_dataset(builders.dataset(request.param))


def _check_transitions(b, discrete):
    actions = builders.arrays(discrete)["actions"]
    t = _step_of(b.observations).astype(int)
    nxt = _step_of(b.next_observations)
    np.testing.assert_array_equal(np.asarray(b.states)[:, 0], t)
    np.testing.assert_array_equal(np.asarray(b.index), t)
    for k, step in enumerate(t):
        if step in ENDS:
            # The observation after the episode, never the next episode's first step.
            assert nxt[k] == -(ENDS[step] + 1)
            assert np.asarray(b.next_states)[k, 0] == -(ENDS[step] + 1)
        else:
            assert nxt[k] == step + 1 and np.asarray(b.next_states)[k, 0] == step + 1
        assert bool(b.terminals[k]) == (step in TERMINAL_ENDS)
        assert bool(b.truncations[k]) == (step in ENDS and step not in TERMINAL_ENDS)
        assert b.bootstrap[k] == (0.0 if step in TERMINAL_ENDS else 1.0)
        assert b.rewards[k] == pytest.approx(step / 10)
        if discrete:
            legal = np.asarray(b.next_legal_actions)[k]
            if step in ENDS:
                assert legal[:, -1].all() and not legal[:, :-1].any()  # the final mask
            else:  # step t+1 allows {0, (t + 1 + i) % 3}
                for i in range(builders.N):
                    assert legal[i, 0] and legal[i, (step + 1 + i) % builders.A]
        # In-sample next action: step t+1's, or (no next step in the data) step t's own.
        assert bool(b.last[k]) == (step in ENDS)
        following = step if step in ENDS else step + 1
        np.testing.assert_array_equal(np.asarray(b.next_actions)[k], actions[following])
    assert np.all(np.asarray(b.valid) == 1)


def test_every_step_pairs_with_its_own_next(sampler):
    discrete = sampler.legal_actions is not None
    b = jax.jit(Sampler.gather)(sampler, np.arange(10))
    _check_transitions(b, discrete)
    if not discrete:
        assert b.legal_actions is None and b.next_legal_actions is None


def test_sample_is_jittable_deterministic_and_covers_the_data(sampler):
    key = jax.random.PRNGKey(3)
    b = sampler.sample(key, 2048)
    again = sampler.sample(key, 2048)
    jax.tree.map(np.testing.assert_array_equal, b, again)
    _check_transitions(b, sampler.legal_actions is not None)
    counts = np.bincount(_step_of(b.observations).astype(int), minlength=10)
    assert counts.min() > 2048 / 10 * 0.7  # uniform over all 10 steps
    assert b.observations.shape == (2048, builders.N, builders.O)
    inside_jit = jax.jit(lambda s, k: s.sample(k, 16).rewards.sum())(sampler, key)
    assert np.isfinite(inside_jit)


def test_windows_stay_inside_one_episode(sampler):
    length = 5
    w = sampler.sample_windows(jax.random.PRNGKey(0), 512, length)
    assert w.observations.shape == (512, length, builders.N, builders.O)
    steps = _step_of(w.observations).astype(int)
    valid = np.asarray(w.valid)
    starts = set()
    for row, ok in zip(steps, valid, strict=True):
        start = row[0]
        starts.add(start)
        last = next(e for e in sorted(ENDS) if e >= start)
        n_valid = min(length, last - start + 1)
        np.testing.assert_array_equal(ok, np.arange(length) < n_valid)
        np.testing.assert_array_equal(row[:n_valid], np.arange(start, start + n_valid))
        assert np.all(row[n_valid:] == last)  # padding repeats the last step
        assert len(set(EPISODE[row])) == 1  # never crosses into another episode
    assert starts == set(range(10))
    # Window steps carry full transitions: the last valid step's next is the episode's final.
    flat = jax.tree.map(lambda x: None if x is None else x.reshape(-1, *x.shape[2:]), w)
    real = np.asarray(flat.valid) == 1
    _check_transitions(jax.tree.map(lambda x: x[real], flat), sampler.legal_actions is not None)


def test_each_array_is_stored_once():
    ds = builders.dataset(True)
    s = Sampler.from_dataset(ds)
    # Dataset arrays plus the [E] episode ends: no copy of next observations or states.
    assert s.nbytes() == ds.nbytes() + 4 * ds.num_episodes
    assert s.num_transitions == 10 and s.num_episodes == 4
