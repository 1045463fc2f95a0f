"""Vaults written by the real flashbax (``flashbax.vault.Vault``), as OG-MARL made its datasets."""

from pathlib import Path

import numpy as np


def write_vault(
    root: Path, name: str, uid: str, experience: dict, chunk: int | None = None
) -> Path:
    """Write ``experience`` (a dict of ``[B, T, ...]`` arrays; nested dicts for ``infos``) to
    ``root/name/uid`` with flashbax, ``chunk`` steps per write (all at once by default)."""
    import jax
    import jax.numpy as jnp
    from flashbax.buffers.trajectory_buffer import TrajectoryBufferState
    from flashbax.vault import Vault

    steps = jax.tree.leaves(experience)[0].shape[1]
    chunk = chunk or steps
    vault = None
    for lo in range(0, steps, chunk):
        hi = min(steps, lo + chunk)
        part = jax.tree.map(lambda x, lo=lo, hi=hi: jnp.asarray(x[:, lo:hi]), experience)
        state = TrajectoryBufferState(
            experience=part, current_index=jnp.int32(hi - lo), is_full=jnp.bool_(False)
        )
        if vault is None:
            vault = Vault(name, experience_structure=part, rel_dir=str(root), vault_uid=uid)
        vault.write(state, source_interval=(0, hi - lo))
    return root / name / uid


def smac_like(rng, batch=2, steps=60, agents=3, obs=5, state=7, actions=4, lengths=(7, 11, 5)):
    """Discrete experience with legal masks, terminals and truncations, as OG-MARL's SMAC vaults.

    Episodes cycle through ``lengths``; odd episodes end in a truncation, even ones in a
    terminal; the last few steps of batch row 0 are an unfinished episode.
    """
    shape = (batch, steps, agents)
    legal = rng.random((*shape, actions)) < 0.6
    legal[..., 0] = True  # a no-op, as SMAC's for dead units
    act = np.zeros(shape, np.int32)
    for idx in np.ndindex(*shape):
        act[idx] = rng.choice(np.flatnonzero(legal[idx]))
    term = np.zeros(shape, np.float32)
    trunc = np.zeros(shape, np.float32)
    for b in range(batch):
        t, k = -1, 0
        while True:
            t += lengths[k % len(lengths)]
            if t >= steps - (3 if b == 0 else 0):
                break
            (trunc if k % 2 else term)[b, t] = 1.0
            k += 1
        if b == 1:  # row 1 ends exactly with an episode
            term[b, -1] = 1.0
    team = rng.normal(size=(batch, steps, 1)).astype(np.float32)
    return {
        "observations": rng.normal(size=(*shape, obs)).astype(np.float32),
        "actions": act,
        "rewards": np.repeat(team, agents, axis=2),
        "terminals": term,
        "truncations": trunc,
        "infos": {
            "state": rng.normal(size=(batch, steps, state)).astype(np.float32),
            "legals": legal.astype(np.float32),
        },
    }
