"""Device-resident sampler: the whole dataset goes to the device once; sampling is jittable.

Every observation and state is stored once. The next observation of step t is row t+1 when t is
not the last step of its episode, and the episode's ``final_*`` row when it is, so a sample never
pairs a step with the first step of the next episode. The episode of a step is found by binary
search over the episode ends (``[E]``), so no per-step index array is kept.

``next_actions`` is the dataset's action at step t+1 (in-sample targets such as ICQ's); at an
episode's last step there is none, ``last`` is True and ``next_actions`` repeats step t's action.

``bootstrap`` is 0 after a terminal and 1 otherwise (a truncation is bootstrapped from its final
observation). Windows (for recurrent models) are padded past their episode's end with the last
step repeated and ``valid = 0``; they never cross into the next episode.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from macflow.data.dataset import Dataset

Array = jax.Array


class Batch(struct.PyTreeNode):
    """Transitions with leading axes ``[B]`` (or ``[B, L]`` for windows), agent axis next."""

    observations: Array  # [B, N, O] float32
    states: Array  # [B, S] float32
    actions: Array  # [B, N, A] float32 (continuous) | [B, N] int32 (discrete)
    legal_actions: Array | None  # [B, N, A] bool (discrete) | None
    rewards: Array  # [B] float32 team reward
    terminals: Array  # [B] bool
    truncations: Array  # [B] bool
    bootstrap: Array  # [B] float32: 0 after a terminal, 1 otherwise
    next_observations: Array  # [B, N, O]
    next_states: Array  # [B, S]
    next_legal_actions: Array | None  # [B, N, A] bool | None
    next_actions: Array  # [B, ...] the action of step t+1 (step t's own where ``last``)
    last: Array  # [B] bool: the step ends its episode (no next action in the data)
    valid: Array  # [B] float32: 1 for real steps, 0 for window padding
    index: Array  # [B] int32: the dataset row of each transition


class Sampler(struct.PyTreeNode):
    """The dataset's arrays on one device plus the index of each episode's last step."""

    observations: Array
    states: Array
    actions: Array
    legal_actions: Array | None
    rewards: Array
    terminals: Array
    truncations: Array
    final_observations: Array
    final_states: Array
    final_legal_actions: Array | None
    ends: Array  # [E] int32, sorted

    @classmethod
    def from_dataset(cls, ds: Dataset, device: jax.Device | None = None) -> Sampler:
        """Copy every array of ``ds`` to ``device`` (default: JAX's default device) once."""
        arrays = ds.arrays

        def put(name):
            if name not in arrays:
                return None
            return jax.device_put(np.asarray(arrays[name]), device)

        return cls(
            **{f: put(f) for f in cls.__dataclass_fields__ if f != "ends"},
            ends=jax.device_put(ds.ends.astype(np.int32), device),
        )

    @property
    def num_transitions(self) -> int:
        return self.rewards.shape[0]

    @property
    def num_episodes(self) -> int:
        return self.ends.shape[0]

    def nbytes(self) -> int:
        """Device bytes held by the sampler."""
        return sum(x.nbytes for x in jax.tree.leaves(self))

    def gather(self, idx: Array) -> Batch:
        """Transitions at step indices ``idx`` (any integer shape)."""
        episode = jnp.searchsorted(self.ends, idx, side="left")
        at_end = self.ends[episode] == idx
        nxt = jnp.minimum(idx + 1, self.num_transitions - 1)

        def following(steps, finals):
            if steps is None:
                return None
            a, b = steps[nxt], finals[episode]
            return jnp.where(at_end.reshape(at_end.shape + (1,) * (a.ndim - at_end.ndim)), b, a)

        terminals = self.terminals[idx]
        return Batch(
            observations=self.observations[idx],
            states=self.states[idx],
            actions=self.actions[idx],
            legal_actions=None if self.legal_actions is None else self.legal_actions[idx],
            rewards=self.rewards[idx],
            terminals=terminals,
            truncations=self.truncations[idx],
            bootstrap=1.0 - terminals.astype(jnp.float32),
            next_observations=following(self.observations, self.final_observations),
            next_states=following(self.states, self.final_states),
            next_legal_actions=following(self.legal_actions, self.final_legal_actions),
            next_actions=self.actions[jnp.where(at_end, idx, nxt)],
            last=at_end,
            valid=jnp.ones(idx.shape, jnp.float32),
            index=idx.astype(jnp.int32),
        )

    @functools.partial(jax.jit, static_argnames=("batch_size",))
    def sample(self, key: Array, batch_size: int) -> Batch:
        """``batch_size`` transitions drawn uniformly with replacement."""
        idx = jax.random.randint(key, (batch_size,), 0, self.num_transitions)
        return self.gather(idx)

    @functools.partial(jax.jit, static_argnames=("batch_size", "length"))
    def sample_windows(self, key: Array, batch_size: int, length: int) -> Batch:
        """``batch_size`` windows of ``length`` consecutive steps of one episode, ``[B, L, ...]``.

        Starts are uniform over all steps; positions past the episode's last step repeat that
        step and have ``valid = 0``.
        """
        start = jax.random.randint(key, (batch_size, 1), 0, self.num_transitions)
        last = self.ends[jnp.searchsorted(self.ends, start, side="left")]
        idx = start + jnp.arange(length)[None, :]
        batch = self.gather(jnp.minimum(idx, last))
        return batch.replace(valid=(idx <= last).astype(jnp.float32))
