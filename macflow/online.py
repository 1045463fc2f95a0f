"""The online replay buffer of fine-tuning: a fixed-capacity ring of transitions on the device.

It holds what the decentralised students met in the real environment, in the layout of the
offline data (:class:`macflow.data.sampler.Batch`): agent axis second, team reward, terminal and
truncation kept apart. Each row stores its own next observation, state and legal mask, taken
from the environment's step before any reset, so a row never pairs the last step of one episode
with the first of the next, and a truncated row bootstraps from the episode's real final
observation (``bootstrap`` is 0 only after a terminal). Everything is jittable: ``add`` writes
a batch of environments' steps at once, ``sample`` draws uniformly from the rows written so far.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import struct

from macflow.data.sampler import Batch
from macflow.spec import EnvSpec, TimeStep

Array = jax.Array


class OnlineBuffer(struct.PyTreeNode):
    """``capacity`` rows; once full, the oldest rows are overwritten first."""

    observations: Array  # [C, N, O]
    states: Array  # [C, S]
    actions: Array  # [C, N, A] float32 | [C, N] int32
    legal_actions: Array | None  # [C, N, A] bool | None
    rewards: Array  # [C]
    terminals: Array  # [C] bool
    truncations: Array  # [C] bool
    next_observations: Array  # [C, N, O]
    next_states: Array  # [C, S]
    next_legal_actions: Array | None  # [C, N, A] bool | None
    size: Array  # [] int32: rows written, at most C
    cursor: Array  # [] int32: the row the next write starts at

    @classmethod
    def empty(cls, spec: EnvSpec, capacity: int) -> OnlineBuffer:
        if capacity < 1:
            raise ValueError(f"the online buffer needs capacity >= 1, got {capacity}")
        n, c = spec.num_agents, capacity
        obs = jnp.zeros((c, n, spec.obs_dim), jnp.float32)
        state = jnp.zeros((c, spec.state_dim), jnp.float32)
        if spec.discrete:
            actions = jnp.zeros((c, n), jnp.int32)
            legal = jnp.zeros((c, n, spec.action_dim), bool)
        else:
            actions, legal = jnp.zeros((c, n, spec.action_dim), jnp.float32), None
        flag = jnp.zeros((c,), bool)
        return cls(
            observations=obs,
            states=state,
            actions=actions,
            legal_actions=legal,
            rewards=jnp.zeros((c,), jnp.float32),
            terminals=flag,
            truncations=flag,
            next_observations=obs,
            next_states=state,
            next_legal_actions=legal,
            size=jnp.int32(0),
            cursor=jnp.int32(0),
        )

    @property
    def capacity(self) -> int:
        return self.rewards.shape[0]

    def add(self, before: TimeStep, actions: Array, after: TimeStep) -> OnlineBuffer:
        """Store one step of each of ``E`` environments: ``before`` (what the agents saw,
        ``[E, N, ...]``), the ``actions`` they took and ``after`` (the step's outcome, before any
        reset). ``E`` must not exceed the capacity."""
        e = actions.shape[0]
        rows = (self.cursor + jnp.arange(e)) % self.capacity

        def put(buf, x):
            return None if buf is None else buf.at[rows].set(x.astype(buf.dtype))

        return self.replace(
            observations=put(self.observations, before.observations),
            states=put(self.states, before.state),
            actions=put(self.actions, actions),
            legal_actions=put(self.legal_actions, before.legal_actions),
            rewards=put(self.rewards, after.reward),
            terminals=put(self.terminals, after.terminal),
            # A step that ends in a terminal is not also a truncation (the dataset's convention).
            truncations=put(self.truncations, after.truncation & ~after.terminal),
            next_observations=put(self.next_observations, after.observations),
            next_states=put(self.next_states, after.state),
            next_legal_actions=put(self.next_legal_actions, after.legal_actions),
            size=jnp.minimum(self.size + e, self.capacity).astype(jnp.int32),
            cursor=((self.cursor + e) % self.capacity).astype(jnp.int32),
        )

    def gather(self, idx: Array) -> Batch:
        """The rows ``idx`` as a :class:`Batch` (``last`` is True: no next action is stored)."""
        terminals = self.terminals[idx]
        pick = lambda x: None if x is None else x[idx]  # noqa: E731
        return Batch(
            observations=self.observations[idx],
            states=self.states[idx],
            actions=self.actions[idx],
            legal_actions=pick(self.legal_actions),
            rewards=self.rewards[idx],
            terminals=terminals,
            truncations=self.truncations[idx],
            bootstrap=1.0 - terminals.astype(jnp.float32),
            next_observations=self.next_observations[idx],
            next_states=self.next_states[idx],
            next_legal_actions=pick(self.next_legal_actions),
            next_actions=self.actions[idx],
            last=jnp.ones(idx.shape, bool),
            valid=jnp.ones(idx.shape, jnp.float32),
            index=jnp.full(idx.shape, -1, jnp.int32),
        )

    @functools.partial(jax.jit, static_argnames=("batch_size",))
    def sample(self, key: Array, batch_size: int) -> Batch:
        """``batch_size`` rows drawn uniformly with replacement from those written (row 0,
        zeros, while the buffer is still empty: callers mix in online rows only once it is not)."""
        idx = jax.random.randint(key, (batch_size,), 0, jnp.maximum(self.size, 1))
        return self.gather(idx)


def concat(a: Batch, b: Batch) -> Batch:
    """Two batches as one, ``a``'s rows first (fields that are None in both stay None)."""
    return jax.tree.map(lambda x, y: jnp.concatenate([x, y], axis=0), a, b)
