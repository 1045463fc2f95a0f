"""Action spaces as objects: everything agents do differently for continuous and discrete actions.

``action_space(spec)`` is the one place that asks a task for its kind of actions. It gives

- :class:`Continuous`: a box of ``D`` dimensions, which agents see as ``[-1, 1]`` per dimension
  (``from_env`` / ``to_env`` map to and from the env's bounds);
- :class:`Discrete`: one of ``A`` actions per agent, as an index, with legal-action masks.

Both are frozen dataclasses (hashable, so static under ``jit``; agents rebuild them from their
static spec, so nothing is added to an agent's pytree or checkpoints) with the same methods:

- data: ``from_env`` (env actions -> the agents' own space: unit vectors or indices), ``to_env``,
  ``vectors`` (actions as vectors: the unit action itself, or a one-hot; the flow targets
  ``x_1`` of arXiv 2511.05005, eq. 1), ``storage_dtype``;
- networks: ``size`` (outputs of a deterministic head), ``policy_size`` (of a stochastic one:
  logits, or a Gaussian's mean and log-std), ``critic`` and ``critic_input`` (a per-agent critic
  reads the action, or outputs one value per action);
- deterministic heads: ``squash`` (tanh into the box; logits stay logits), ``relax`` (the
  differentiable stand-in a critic scores: the action itself, or the legal-masked softmax),
  ``decode`` (clip into the box, or the legal argmax), ``act`` (acting modes of ``ACT_MODES``);
- stochastic heads: ``parse_policy`` (network output -> logits or ``(mean, log_std)``),
  ``log_prob``, ``sample``;
- ``utility``: a per-agent critic's value of a policy's output, ``Q_i(o_i, a_i)`` at the action
  (continuous) or the expected utility ``sum_a pi_i(a) Q_i(o_i, a)`` (discrete; eq. 4's Q term
  with a softmax, so its gradient reaches the policy where an argmax would give none).

Discrete actions are never illegal: acting, decoding and sampling all go through the legal
mask (``masked_logits``).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from macflow.nn import Critic, pick
from macflow.spec import EnvSpec

Array = jax.Array


def masked_logits(logits: Array, legal: Array | None) -> Array:
    """Illegal actions get a large negative logit (finite, so gradients stay finite)."""
    return logits if legal is None else jnp.where(legal, logits, -1e9)


def _heads(q: Array, head: int | None) -> Array:
    """A critic ensemble's ``[H, ...]`` values: their mean, or head ``head``."""
    return q.mean(axis=0) if head is None else q[head]


def _no_noise(std) -> bool:
    return std is None or (isinstance(std, int | float) and std == 0)


@dataclasses.dataclass(frozen=True)
class Continuous:
    """Per-agent actions in the box ``[low, high]`` (``dim`` dimensions); agents work in
    ``[-1, 1]``."""

    dim: int
    low: tuple[float, ...]
    high: tuple[float, ...]

    discrete: ClassVar[bool] = False

    # --- data ---------------------------------------------------------------------------------

    def from_env(self, actions: Array) -> Array:
        """Env actions -> [-1, 1] per dimension."""
        low, high = jnp.asarray(self.low), jnp.asarray(self.high)
        return 2 * (actions - low) / (high - low) - 1

    def to_env(self, unit: Array) -> Array:
        """[-1, 1] -> env actions within the bounds."""
        low, high = jnp.asarray(self.low), jnp.asarray(self.high)
        return jnp.clip(low + (unit + 1) * (high - low) / 2, low, high)

    def vectors(self, unit: Array, off: float = 0.0) -> Array:
        """Unit actions as vectors ``[..., D]``: themselves (``off`` is the discrete kind's)."""
        return unit

    @property
    def storage_dtype(self):
        return jnp.float32

    # --- networks -----------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Outputs of a deterministic head: one per dimension."""
        return self.dim

    @property
    def policy_size(self) -> int:
        """Outputs of a Gaussian head: a mean and a log-std per dimension."""
        return 2 * self.dim

    def critic(self, hidden, heads: int, layer_norm: bool = True) -> Critic:
        """Per-agent critic ``Q_i(o_i, id_i, a_i) -> [H, ..., N]``."""
        return Critic(hidden, None, heads, layer_norm)

    def critic_input(self, unit: Array) -> Array:
        """What the critic reads besides the observation: the unit action."""
        return unit

    # --- deterministic heads ------------------------------------------------------------------

    def squash(self, out: Array) -> Array:
        """A head's raw output -> a unit action (tanh)."""
        return jnp.tanh(out)

    def relax(self, unit: Array, legal: Array | None) -> Array:
        """What a critic scores: the unit action itself."""
        return unit

    def decode(self, x: Array, legal: Array | None) -> Array:
        """A generated vector (flow or diffusion end point) -> a unit action."""
        return jnp.clip(x, -1.0, 1.0)

    def act(self, unit: Array, legal: Array | None, mode: str, key: Array, std=None) -> Array:
        """The unit action; ``sample`` mode adds Gaussian noise of std ``std`` (TD3's exploration
        noise; None or 0: none), clipped back into the box."""
        if mode == "zero" or _no_noise(std):
            return unit
        return jnp.clip(unit + std * jax.random.normal(key, unit.shape), -1.0, 1.0)

    def export_head(self, mean: str = "tanh", std=0.0, squash: str = "clip") -> dict:
        """How an exported policy (``macflow export``, :mod:`macflow.deploy`) turns its
        network's output into a unit action: mean ``tanh`` of the first D outputs (or
        ``linear``: as they are), std a constant or ``[lo, hi]`` (the bounds of a learned
        log-std in the next D outputs), ``u = mean + std * action_noise``, then ``clip`` into
        [-1, 1] or ``tanh``."""
        std = [float(s) for s in std] if isinstance(std, tuple | list) else float(std)
        return {"kind": "box", "mean": mean, "std": std, "squash": squash}

    def describe(self) -> dict:
        """The action space as JSON (an exported policy's ``spec.json``)."""
        low, high = list(self.low), list(self.high)
        return {"kind": "continuous", "dim": self.dim, "low": low, "high": high}

    # --- stochastic heads: a diagonal Gaussian on [-1, 1] ---------------------------------------

    def parse_policy(
        self, out: Array, log_std_min: float, log_std_max: float, bounded: bool = False
    ) -> tuple[Array, Array]:
        """``[..., 2 D]`` -> ``(mean, log_std)``, the log-std clipped; ``bounded``: the mean is
        tanh'd into the box (else a pre-tanh mean, for :meth:`sample`'s ``squash``)."""
        mean, log_std = jnp.split(out, 2, axis=-1)
        mean = jnp.tanh(mean) if bounded else mean
        return mean, jnp.clip(log_std, log_std_min, log_std_max)

    def log_prob(self, policy: tuple[Array, Array], legal: Array | None, x: Array) -> Array:
        """``log N(x; mean, diag exp(log_std)^2)`` summed over dimensions, ``[...]``."""
        mean, log_std = policy
        z = (x - mean) * jnp.exp(-log_std)
        return (-0.5 * z**2 - log_std - 0.5 * jnp.log(2 * jnp.pi)).sum(axis=-1)

    def sample(
        self, policy: tuple[Array, Array], legal, mode: str, key: Array, squash: bool = False
    ) -> Array:
        """``zero``: the mean; ``sample``: a Gaussian draw, clipped into the box, or with
        ``squash`` a tanh-squashed Gaussian (the mean is then pre-tanh)."""
        mean, log_std = policy
        if not squash:
            return self.act(mean, legal, mode, key, std=jnp.exp(log_std))
        if mode == "sample":
            mean = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape)
        return jnp.tanh(mean)

    # --- critics ------------------------------------------------------------------------------

    def utility(
        self, critic: Critic, params, obs: Array, unit: Array, head: int | None = None
    ) -> Array:
        """``Q_i(o_i, a_i)`` ``[..., N]`` of unit actions: heads averaged, or head ``head``."""
        return _heads(critic.apply(params, obs, unit), head)


@dataclasses.dataclass(frozen=True)
class Discrete:
    """Per-agent choice of one of ``n`` actions (an index), under legal-action masks."""

    n: int

    discrete: ClassVar[bool] = True

    # --- data ---------------------------------------------------------------------------------

    def from_env(self, actions: Array) -> Array:
        """Env actions are already indices."""
        return actions

    def to_env(self, actions: Array) -> Array:
        return actions

    def vectors(self, actions: Array, off: float = 0.0) -> Array:
        """Indices as one-hot vectors ``[..., A]``, the other entries ``off`` (0, or the {-1, 1}
        "analog bits" of the diffusion policy with ``off = -1``)."""
        one_hot = jax.nn.one_hot(actions, self.n)
        return one_hot if off == 0 else (1 - off) * one_hot + off

    @property
    def storage_dtype(self):
        """Indices are small integers."""
        return jnp.int8 if self.n <= 127 else jnp.int16

    # --- networks -----------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Outputs of a deterministic head: one logit per action."""
        return self.n

    @property
    def policy_size(self) -> int:
        """Outputs of a categorical head: one logit per action."""
        return self.n

    def critic(self, hidden, heads: int, layer_norm: bool = True) -> Critic:
        """Per-agent critic ``Q_i(o_i, id_i) -> [H, ..., N, A]``, one value per action."""
        return Critic(hidden, self.n, heads, layer_norm)

    def critic_input(self, unit: Array) -> None:
        """The critic reads no action: it outputs a value per action."""
        return None

    # --- deterministic heads (logits) ---------------------------------------------------------

    def squash(self, out: Array) -> Array:
        """Logits stay logits."""
        return out

    def relax(self, logits: Array, legal: Array | None) -> Array:
        """What a critic scores: the legal-masked softmax (0 on illegal actions)."""
        return jax.nn.softmax(masked_logits(logits, legal))

    def decode(self, x: Array, legal: Array | None) -> Array:
        """A generated vector (flow or diffusion end point) -> its legal argmax."""
        return jnp.argmax(masked_logits(x, legal), axis=-1)

    def act(self, logits: Array, legal: Array | None, mode: str, key: Array, std=None) -> Array:
        """``zero``: the legal argmax; ``sample``: a draw from the legal-masked softmax
        (``std`` is the continuous kind's)."""
        logits = masked_logits(logits, legal)
        if mode == "zero":
            return jnp.argmax(logits, axis=-1)
        return jax.random.categorical(key, logits)

    def export_head(self, mean: str = "tanh", std=0.0, squash: str = "clip") -> dict:
        """An exported policy's head: the legal argmax of the logits plus Gumbel draws (zeros:
        greedy), as :meth:`act` samples (the continuous kind's options do not apply)."""
        return {"kind": "categorical"}

    def describe(self) -> dict:
        """The action space as JSON (an exported policy's ``spec.json``)."""
        return {"kind": "discrete", "n": self.n}

    # --- stochastic heads: a categorical over legal actions ------------------------------------

    def parse_policy(
        self, out: Array, log_std_min: float, log_std_max: float, bounded: bool = False
    ) -> Array:
        """Logits, as they are (the Gaussian's options are the continuous kind's)."""
        return out

    def log_prob(self, logits: Array, legal: Array | None, actions: Array) -> Array:
        """``log pi(a | .)`` under the legal mask, ``[...]``."""
        return pick(jax.nn.log_softmax(masked_logits(logits, legal)), actions)

    def sample(self, logits: Array, legal, mode: str, key: Array, squash: bool = False) -> Array:
        """As :meth:`act` (``squash`` is the continuous kind's)."""
        return self.act(logits, legal, mode, key)

    # --- critics ------------------------------------------------------------------------------

    def utility(
        self, critic: Critic, params, obs: Array, probs: Array, head: int | None = None
    ) -> Array:
        """Expected utility ``sum_a pi_i(a) Q_i(o_i, a)`` ``[..., N]`` of probabilities ``probs``
        ``[..., N, A]``: heads averaged (before the expectation), or head ``head``."""
        return (probs * _heads(critic.apply(params, obs), head)).sum(axis=-1)


ActionSpace = Continuous | Discrete


def action_space(spec: EnvSpec) -> ActionSpace:
    """The action space of a task."""
    if spec.discrete:
        return Discrete(spec.action_dim)
    return Continuous(spec.action_dim, tuple(spec.action_low), tuple(spec.action_high))
