"""What every agent provides, and small helpers agents share.

An agent is an immutable ``flax.struct.PyTreeNode`` (fql's shape) with

    Agent.supports(spec)                      -> None, or why it cannot run the task
    Agent.create(key, spec, config)           -> agent   (ValueError where unsupported)
    Agent.stages(config, steps)               -> [Stage, ...]   the training schedule
    agent.prepare(sampler, stage)             -> aux            per-stage precomputation
    agent.update(batch, stage, aux)           -> (agent, info)  jittable, ``stage`` static
    agent.act(key, observations, legal, mode, states) -> env actions    jittable

and the class attributes ``Config`` (a frozen dataclass), ``presets`` (name -> function of the
EnvSpec returning a Config) and ``centralised``. A decentralised agent (``centralised = False``)
ignores ``states``: each agent acts on its own observation. A centralised one (the diffusion
baseline, which denoises the joint action at test time as diffusion MARL does) also reads the
global state ``[..., S]``; evaluation always passes it. The training loop and the CLI use nothing
else, so no code outside an agent's own file needs to know which algorithm it runs.

Agents derive from :class:`AgentBase` (the sweep asks ``supports`` before planning a job; the
default supports every task) and act through ``self.space``, the task's
:mod:`~macflow.agents.actions` space, so none of them branches on the kind of actions except
where its own method differs by kind.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

from macflow.agents.actions import ActionSpace, action_space, masked_logits
from macflow.nn import LinearMixer, QMixer
from macflow.spec import EnvSpec

__all__ = ["masked_logits"]  # re-exported: it lives with the discrete action space

Array = jax.Array
ACT_MODES = ("sample", "zero")
"""``sample``: each agent draws fresh noise every step (discrete students then sample their
softmax); ``zero``: noise fixed at 0 and discrete students act greedily (deterministic)."""


class Stage(NamedTuple):
    name: str
    """Passed to ``update`` as its static ``stage`` argument."""
    steps: int
    """Number of updates in this stage."""
    evaluate: bool
    """Whether the policy is worth evaluating during this stage."""
    prepare: bool = False
    """Call ``agent.prepare(sampler, name)`` when the stage starts (or resumes) and pass its
    result to every ``update`` of the stage as ``aux`` (e.g. cached teacher targets). ``aux`` is
    recomputed, never checkpointed."""


class Agent(Protocol):
    Config: type
    presets: dict[str, Any]
    centralised: bool

    @classmethod
    def supports(cls, spec: EnvSpec) -> str | None: ...

    @classmethod
    def create(cls, key: Array, spec: EnvSpec, config: Any) -> Agent: ...

    @classmethod
    def stages(cls, config: Any, steps: int) -> list[Stage]: ...

    def prepare(self, sampler: Any, stage: str) -> Any: ...

    def update(self, batch: Any, stage: str, aux: Any = None) -> tuple[Agent, dict[str, Array]]: ...

    def act(
        self,
        key: Array,
        observations: Array,
        legal: Array | None,
        mode: str,
        states: Array | None = None,
    ) -> Array: ...


class AgentBase:
    """What every agent class shares: its action space, rebuilt from its static ``spec`` (cheap;
    nothing of it is state), and ``supports`` saying every task is supported unless the agent
    overrides it."""

    @classmethod
    def supports(cls, spec: EnvSpec) -> str | None:
        """None where the agent can run ``spec``, else why not (one line)."""
        return None

    @property
    def space(self) -> ActionSpace:
        return action_space(self.spec)


_POSITIVE = ("lr", "critic_lr", "tau", "beta", "critic_beta", "max_weight", "exp_max")
_AT_LEAST_ONE = (
    "critic_heads", "flow_steps", "policy_delay", "timesteps", "ddim_steps", "guide_steps",
    "target_period", "mixer_hidden",
)  # fmt: skip
_NON_NEGATIVE = (
    "alpha", "q_weight", "cql", "grad_clip", "policy_noise", "noise_clip", "act_noise",
    "eta",
)  # fmt: skip
_UNIT = {"discount": (0.0, 1.0), "tau": (0.0, 1.0), "ema": (0.0, 1.0)}


def check_config(config: Any) -> None:
    """The checks every agent config shares, by field name: finite numbers, learning rates and
    temperatures > 0, counts >= 1, coefficients >= 0, discount in [0, 1], tau in (0, 1], layer
    widths >= 1. Raises ``ValueError`` naming the ``--agent.*`` flag (configs call it in
    ``__post_init__``, so a bad command line fails before anything runs)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        flag = "--agent." + f.name.replace("_", "-")
        if isinstance(value, bool):
            continue
        if isinstance(value, float | int) and not math.isfinite(value):
            raise ValueError(f"{flag} must be a finite number, got {value}")
        if f.name in _POSITIVE and value <= 0:
            raise ValueError(f"{flag} must be > 0, got {value}")
        if f.name in _AT_LEAST_ONE and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
        if f.name in _NON_NEGATIVE and value < 0:
            raise ValueError(f"{flag} must be >= 0, got {value}")
        if f.name in _UNIT:
            low, high = _UNIT[f.name]
            if not low <= value <= high:
                raise ValueError(f"{flag} must lie in [{low:g}, {high:g}], got {value}")
        if f.name.endswith("hidden"):
            widths = value if isinstance(value, tuple) else (value,)
            if any(not isinstance(w, int) or w < 1 for w in widths):
                raise ValueError(f"{flag} widths must be integers >= 1, got {value}")


def adam_step(lr: float, params, grads, opt_state):
    """One Adam step; the optimiser is rebuilt from static config, only its state is carried."""
    updates, opt_state = optax.adam(lr).update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def clipped_step(lr: float, clip: float, params, grads, opt_state):
    """Adam step after scaling the gradient to global norm <= ``clip`` (0: no clip)."""
    if clip > 0:
        norm = optax.tree.norm(grads)
        grads = jax.tree.map(lambda g: g * jnp.minimum(1.0, clip / (norm + 1e-6)), grads)
    return adam_step(lr, params, grads, opt_state)


def polyak(target, online, tau: float):
    """``target <- tau * online + (1 - tau) * target``."""
    return jax.tree.map(lambda t, o: tau * o + (1 - tau) * t, target, online)


def require(agent: type[Agent], spec: EnvSpec) -> None:
    """Raise ``ValueError`` with the agent's reason where it does not support ``spec``."""
    reason = agent.supports(spec)
    if reason is not None:
        raise ValueError(reason)


def mix(kind: str, params, q: Array, states: Array) -> Array:
    """``[..., N]`` utilities -> ``[...]`` team value: VDN's sum (``vdn``; also the Q term of
    MAC-Flow's ``independent`` ablation), VDN's mean (``vdn-mean``) or QMIX (``qmix``, whose
    hypernetwork ``params`` reads the state)."""
    if kind in ("vdn", "independent"):
        return q.sum(axis=-1)
    if kind == "vdn-mean":
        return q.mean(axis=-1)
    return QMixer().apply(params, q, states)


def linear_mix(mixer: LinearMixer, params, local: Array, states: Array) -> Array:
    """``sum_i w_i(s) x_i + b(s)`` for local values ``[..., N]`` (OMIGA's and ICQ's mixer)."""
    w, b = mixer.apply(params, states)
    return (w * local).sum(axis=-1) + b


def categorical_kl(target: Array, logits: Array) -> Array:
    """``KL(target || softmax(logits))`` over the last axis, ``[...]``.

    ``target`` is a probability vector that is 0 wherever ``logits`` are masked. Its gradient in
    the logits is ``softmax(logits) - target`` (the soft-label cross-entropy's), so it vanishes
    exactly when the two distributions agree; for a one-hot target it is the hard-label
    cross-entropy.
    """
    logp = jax.nn.log_softmax(logits)
    return (jax.scipy.special.xlogy(target, target) - target * logp).sum(axis=-1)


def small(preset):
    """The CPU-sized variant of a preset (``--preset small``): the results table's budget, every
    layer-width tuple 2 x 128, a flow teacher's stage 10,000 updates, Adam 1e-3 (with
    ``macflow train --steps 10000``: minutes per seed on a laptop, docs/results.md)."""

    def make(spec):
        config = preset(spec)
        changes = {}
        for f in dataclasses.fields(config):
            value = getattr(config, f.name)
            if f.name.endswith("hidden") and isinstance(value, tuple):
                changes[f.name] = (128, 128)
        for name, value in (("teacher_steps", 10_000), ("lr", 1e-3)):
            if name in {f.name for f in dataclasses.fields(config)}:
                changes[name] = value
        return dataclasses.replace(config, **changes)

    return make


def mlp_weights(params) -> list[dict[str, Any]]:
    """The layers of the :class:`macflow.nn.MLP` in a module's ``params`` (the MLP itself, or
    a module holding one, as the students and OMIGA's and ICQ's policies do), in order, as
    numpy arrays: ``kernel [in, out]``, ``bias`` and, after a hidden layer's LayerNorm,
    ``ln_scale`` and ``ln_bias``."""
    tree = params["params"] if "params" in params else params
    while "Dense_0" not in tree:
        (tree,) = tree.values()  # a module with one MLP inside
    layers = []
    for i in range(sum(k.startswith("Dense_") for k in tree)):
        layer = {k: np.asarray(v, np.float32) for k, v in tree[f"Dense_{i}"].items()}
        if f"LayerNorm_{i}" in tree:
            ln = tree[f"LayerNorm_{i}"]
            layer |= {"ln_scale": np.asarray(ln["scale"]), "ln_bias": np.asarray(ln["bias"])}
        layers.append(layer)
    return layers


def policy_card(params, head: dict, noise: int = 0, joint: bool = False) -> dict[str, Any]:
    """What an agent's ``export_policy()`` returns (``macflow export``): the weights of its
    per-agent policy network, an MLP shared by all agents on ``(o_i, one-hot id_i[, z_i][,
    joint z])``, and how its output becomes an action (``head``, from the action space's
    ``export_head``). ``noise``: the size of each agent's noise input ``z_i`` (0: none);
    ``joint``: the network also reads the whole team's noise (shared noise)."""
    layers = mlp_weights(params)
    inputs = ["observation", "agent_id"] + ["noise"] * bool(noise) + ["joint_noise"] * joint
    return {
        "layers": layers,
        "input": inputs,
        "noise": noise,
        "joint": joint,
        "layer_norm": "ln_scale" in layers[0],
        "head": head,
    }
