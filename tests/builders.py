"""Hand-built datasets whose every value says where it came from.

``observations[t, i, :] = 10 * t + i`` and ``states[t, :] = t`` at step t; the observation after
episode e is ``-(10 * (e + 1) + i)`` and its state ``-(e + 1)``. A sample can thus be traced back
to its step, and its "next" values checked against the episode structure.
"""

import numpy as np

from macflow.data import Dataset
from macflow.spec import EnvSpec

N, O, S, A = 2, 3, 4, 3  # noqa: E741 (the schema's own symbols)


def spec(discrete: bool, episode_limit: int = 4) -> EnvSpec:
    if discrete:
        return EnvSpec("test/hand", N, O, S, A, discrete=True, episode_limit=episode_limit)
    return EnvSpec(
        "test/hand",
        N,
        O,
        S,
        2,
        discrete=False,
        episode_limit=episode_limit,
        action_low=(-1.0, -2.0),
        action_high=(1.0, 2.0),
    )


def arrays(discrete: bool, lengths=(3, 1, 4, 2), terminal=(True, False, False, True)):
    """Schema arrays for episodes of ``lengths`` ending in a terminal (True) or truncation."""
    T, E = sum(lengths), len(lengths)
    t = np.arange(T, dtype=np.float32)
    agent = np.arange(N, dtype=np.float32)
    ends = np.cumsum(lengths) - 1
    out = {
        "observations": np.broadcast_to((10 * t[:, None] + agent)[..., None], (T, N, O)).copy(),
        "states": np.broadcast_to(t[:, None], (T, S)).copy(),
        "rewards": (t / 10).astype(np.float32),
        "terminals": np.zeros(T, bool),
        "truncations": np.zeros(T, bool),
    }
    out["terminals"][ends[list(terminal)]] = True
    out["truncations"][ends[[not x for x in terminal]]] = True
    e = np.arange(E, dtype=np.float32)
    fin = -(10 * (e[:, None] + 1) + agent)
    out["final_observations"] = np.broadcast_to(fin[..., None], (E, N, O)).copy()
    out["final_states"] = np.broadcast_to(-(e[:, None] + 1), (E, S)).copy()
    if discrete:
        # Step t allows actions {0, (t + i) % A}; the data take the second one.
        legal = np.zeros((T, N, A), bool)
        legal[..., 0] = True
        taken = (np.arange(T)[:, None] + np.arange(N)[None, :]) % A
        np.put_along_axis(legal, taken[..., None], True, axis=-1)
        out["actions"] = taken.astype(np.int32)
        out["legal_actions"] = legal
        final = np.zeros((E, N, A), bool)
        final[..., -1] = True
        out["final_legal_actions"] = final
    else:
        rng = np.random.default_rng(0)
        out["actions"] = rng.uniform([-1, -2], [1, 2], size=(T, N, 2)).astype(np.float32)
    return out


def dataset(discrete: bool, **kwargs) -> Dataset:
    return Dataset(
        arrays=arrays(discrete, **kwargs),
        spec=spec(discrete),
        quality="hand-built",
        provenance={"method": "test", "seed": 0},
        env_kwargs={"size": 1},
        reference_returns={"random": 0.0, "expert": 2.0},
    )
