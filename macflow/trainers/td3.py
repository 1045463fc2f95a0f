"""TD3 behaviour policies for host (MuJoCo) tasks, and the datasets of every quality level.

Decentralised deterministic actors (one network shared by all agents, each agent sees its own
observation and a one-hot id) explore with Gaussian noise; a centralised twin critic sees the
global state and the joint action. Updates follow TD3: clipped double-Q targets with target
policy smoothing, the actor and the target networks updated every ``policy_delay`` critic updates.
Each jitted call runs the updates of one iteration (``lax.scan``) while the workers step the
environments (:mod:`macflow.envs.host`), so both cores stay busy.

``fit`` writes to its directory:

    checkpoint.npz         networks, optimisers, the whole replay buffer, counters, RNG state
                           (atomic; every few minutes, on Ctrl-C and at the end)
    snapshots/<i>.msgpack  the actor of snapshot i (4 digits)
    curve.json             the learning curve (:class:`~macflow.trainers.qualities.Curve`),
                           written when training is complete

The replay buffer stores every observation once, in generation order: a row is an observation
with the joint action taken from it and its outcome; ``nxt`` points at the row holding the next
observation, which for an episode's last step is a "final" row (no action). Rows of the parallel
environments interleave; ``episode`` tells them apart, so ``medium-replay`` rebuilds whole
episodes from it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from macflow import __version__
from macflow.data.collect import flatten
from macflow.data.dataset import Dataset
from macflow.data.io import created_now
from macflow.envs import env_kwargs
from macflow.envs.host import HostPool, host_rollout
from macflow.files import write_atomic
from macflow.nn import agent_ids
from macflow.progress import progress_bar
from macflow.spec import EnvSpec
from macflow.trainers.qualities import CONTINUOUS, Curve, Snapshot, check_quality

CHECKPOINT = "checkpoint.npz"
CURVE = "curve.json"
_BUFFER = ("obs", "state", "action", "reward", "terminal", "truncation")
_LINKS = ("nxt", "episode", "final", "step")


@dataclasses.dataclass(frozen=True)
class TD3:
    """TD3 behaviour trainer for continuous host tasks (decentralised actors, central critic)."""

    name: ClassVar[str] = "td3"

    env_steps: int = 300_000
    """Environment steps of training (all parallel environments together)."""
    start_steps: int = 10_000
    """Steps of uniformly random actions before the actor acts (and before any update)."""
    envs: int = 4
    """Environments stepped side by side; one iteration steps each once."""
    workers: int = 2
    """Worker processes stepping them (and the evaluation episodes)."""
    updates_per_step: int = 1
    """Gradient updates (critic) per environment step."""
    hidden: tuple[int, ...] = (128, 128)
    """Hidden layer widths of the actor and of each critic (256-wide layers cost about 4x per
    update, too slow for a CPU-only hour)."""
    batch_size: int = 256
    """Transitions per update."""
    lr: float = 3e-4
    """Adam learning rate of the actor and the critic."""
    gamma: float = 0.99
    """Discount."""
    tau: float = 0.005
    """Polyak rate of the target networks."""
    expl_noise: float = 0.1
    """Std of the Gaussian exploration noise (in [-1, 1] action units); the behaviour policy
    that evaluates snapshots and collects datasets uses the same noise."""
    policy_noise: float = 0.2
    """Std of the target policy smoothing noise."""
    noise_clip: float = 0.5
    """Clip of the target policy smoothing noise."""
    policy_delay: int = 2
    """Critic updates per actor (and target) update."""
    snapshot_every: int = 10_000
    """Environment steps between snapshots (each evaluated on ``eval_episodes`` episodes)."""
    eval_episodes: int = 10
    """Episodes of a snapshot's (and the random policy's) evaluation."""
    checkpoint_minutes: float = 5.0
    """Minutes between checkpoints."""
    collect_chunk: int = 20
    """Episodes run side by side while collecting a dataset."""

    def __post_init__(self):
        positive = ("env_steps", "envs", "workers", "updates_per_step", "policy_delay")
        for name in (*positive, "batch_size", "snapshot_every", "eval_episodes", "collect_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"TD3.{name} must be >= 1, got {getattr(self, name)}")
        if (self.envs * self.updates_per_step) % self.policy_delay:
            raise ValueError(
                f"envs * updates_per_step ({self.envs * self.updates_per_step}) must be a "
                f"multiple of policy_delay ({self.policy_delay})"
            )

    @classmethod
    def quick(cls) -> TD3:
        """Minutes instead of most of an hour: small networks, 50k steps (HalfCheetah starts to
        run after about 40k)."""
        return cls(
            env_steps=50_000,
            start_steps=5_000,
            hidden=(64, 64),
            batch_size=128,
            snapshot_every=5_000,
            eval_episodes=4,
        )

    # ---------------------------------------------------------------- training

    def fit(self, env: Any, seed: int, directory: Path, console: Any = None) -> Curve:
        """Train (resuming from ``directory``) and return the learning curve."""
        directory = Path(directory)
        if (directory / CURVE).exists():
            return Curve.from_json((directory / CURVE).read_text())
        spec = env.spec
        if (directory / CHECKPOINT).exists():
            run = _Run.load(self, spec, directory, seed)
        else:
            run = _Run.fresh(self, spec, seed)
        base = jax.random.PRNGKey(seed)
        update, explore = _update_fn(self, spec), _explore_fn(self, spec)
        bounds = (np.asarray(spec.action_low, np.float32), np.asarray(spec.action_high, np.float32))
        k = self.envs * self.updates_per_step
        with (
            HostPool(env, self.workers) as train,
            HostPool(env, self.workers) as evals,
            _Interrupts() as interrupts,
        ):
            if run.random_return is None:
                out = host_rollout(
                    env,
                    _random_act,
                    {"low": bounds[0], "high": bounds[1]},
                    self.eval_episodes,
                    jax.random.fold_in(base, 1),
                    record=False,
                    pool=evals,
                )
                run.random_return = float(out["returns"].mean())
                run.random_std = float(out["returns"].std())
            bar = progress_bar("ret", "snap", console=console)
            saved = time.monotonic()
            with bar:
                task = bar.add_task(
                    f"td3 {spec.env_id}",
                    total=self.env_steps,
                    completed=run.env_steps,
                    **run.show(),
                )
                cur = run.start_episodes(train)
                while run.env_steps < self.env_steps:
                    if run.env_steps < self.start_steps:
                        shape = (self.envs, *spec.action_shape)
                        actions = run.rng.uniform(bounds[0], bounds[1], shape).astype(np.float32)
                    else:
                        obs = cur["observations"]
                        actions = np.asarray(explore(run.params["actor"], base, run.iteration, obs))
                    train.send_step(actions, np.ones(self.envs, bool))
                    if run.env_steps >= self.start_steps and run.replay.nvalid > 0:
                        batch = run.replay.sample(run.rng, k, self.batch_size, self.policy_delay)
                        run.params, run.metrics = update(run.params, batch, base, run.iteration)
                        run.updates += k
                    nxt = train.recv_step()
                    cur = run.record(cur, actions, nxt, train)
                    if run.env_steps >= (len(run.snapshots) + 1) * self.snapshot_every:
                        run.snapshot(env, evals, directory, jax.random.fold_in(base, 3))
                    if run.iteration % 16 == 0 or interrupts.flag:
                        bar.update(task, completed=run.env_steps, **run.show())
                    if interrupts.flag:
                        run.save(directory)
                        raise KeyboardInterrupt
                    if time.monotonic() - saved > 60 * self.checkpoint_minutes:
                        run.save(directory)
                        saved = time.monotonic()
                if not run.snapshots or run.snapshots[-1].env_steps < run.env_steps:
                    run.snapshot(env, evals, directory, jax.random.fold_in(base, 3))
                bar.update(task, completed=run.env_steps, **run.show())
            run.save(directory)
        curve = Curve(tuple(run.snapshots), run.random_return, run.random_std)
        write_atomic(directory / CURVE, curve.to_json())
        return curve

    # ---------------------------------------------------------------- datasets

    def collect(
        self,
        env: Any,
        directory: Path,
        curve: Curve,
        quality: str,
        transitions: int | None,
        seed: int,
        console: Any = None,
        episodes: int | None = None,
    ) -> Dataset:
        """One quality level's dataset of ``transitions`` rows rounded up to whole episodes, or
        of ``episodes`` episodes; ``medium-expert`` takes as many episodes from each snapshot
        (medium gets the odd one). ``medium-replay`` holds whole episodes of the replay buffer:
        all of them up to the medium snapshot, or a random subset within the requested size."""
        spec = env.spec
        check_quality(spec.env_id, spec.discrete, quality)
        if (transitions is None) == (episodes is None):
            raise ValueError("give exactly one of transitions and episodes")
        size = transitions if episodes is None else episodes
        if size < 1:
            raise ValueError(f"the dataset size must be >= 1, got {size}")
        directory = Path(directory)
        key = jax.random.fold_in(jax.random.PRNGKey(seed), CONTINUOUS.index(quality))
        record = {
            "method": "collect",
            "behaviour": self.name,
            "behaviour_config": dataclasses.asdict(self),
            "quality": quality,
            "seed": seed,
            "trainer_dir": str(directory),
            "macflow_version": __version__,
            "created_at": created_now(),
        }
        snaps = []
        if quality == "medium-replay":
            medium = curve.for_quality("medium")
            arrays = _replay_episodes(
                directory, spec, medium.env_steps, transitions, episodes, seed
            )
            snaps = [("medium", medium)]
            record["source"] = f"replay buffer, episodes started before env step {medium.env_steps}"
        else:
            policies = self._policies(spec, directory, curve, quality)
            snaps = [(role, s) for role, s, _ in policies if s is not None]
            with HostPool(env, self.workers) as pool:
                arrays = self._run_episodes(
                    env, pool, policies, transitions, episodes, key, console
                )
        record["snapshots"] = [
            {
                "role": role,
                "index": s.index,
                "env_steps": s.env_steps,
                "return_mean": s.return_mean,
            }
            for role, s in snaps
        ]
        record["episodes"] = int(arrays["final_states"].shape[0])
        return Dataset(
            arrays=arrays,
            spec=spec,
            quality=quality,
            provenance=record,
            env_kwargs=env_kwargs(env),
            reference_returns=curve.reference_returns(),
        )

    def _policies(self, spec: EnvSpec, directory: Path, curve: Curve, quality: str):
        """``[(role, snapshot or None, (act, params))]``: the policies sharing the episodes."""
        if quality == "random":
            bounds = {"low": np.asarray(spec.action_low), "high": np.asarray(spec.action_high)}
            return [("random", None, (_random_act, bounds))]
        roles = ("medium", "expert") if quality == "medium-expert" else (quality,)
        out = []
        for role in roles:
            snap = curve.for_quality(role)
            actor = load_snapshot(self, spec, directory, snap.index)
            out.append((role, snap, (_policy_act(self, spec), self._behaviour(spec, actor))))
        return out

    def _behaviour(self, spec: EnvSpec, actor: Any) -> dict[str, Any]:
        return {
            "actor": actor,
            "noise": jnp.float32(self.expl_noise),
            "low": jnp.asarray(spec.action_low, jnp.float32),
            "high": jnp.asarray(spec.action_high, jnp.float32),
        }

    def _run_episodes(self, env, pool, policies, transitions, episodes, key, console):
        """Whole episodes from each policy: ``episodes`` split evenly, or the same number from
        each until ``transitions`` rows."""
        spec, k = env.spec, len(policies)
        per_policy: list[list[dict[str, np.ndarray]]] = [[] for _ in policies]
        lengths: list[list[int]] = [[] for _ in policies]
        if episodes is not None:
            shares = [episodes // k + (j < episodes % k) for j in range(k)]
        bar = progress_bar(console=console)
        with bar:
            unit = "episodes" if episodes is not None else "transitions"
            task = bar.add_task(f"collect ({unit})", total=episodes or transitions)
            rnd = 0
            while True:
                m = min(len(x) for x in lengths)
                if episodes is not None:
                    done = sum(len(x) for x in lengths)
                    counts = [
                        min(s - len(x), self.collect_chunk)
                        for s, x in zip(shares, lengths, strict=True)
                    ]
                    if done >= episodes:
                        break
                else:
                    done = rows = sum(sum(x[:m]) for x in lengths)
                    if rows >= transitions:
                        break
                    mean = np.mean(sum(lengths, [])) if rows else spec.episode_limit
                    want = math.ceil((transitions - rows) / k / mean)
                    counts = [int(np.clip(want, pool.workers, self.collect_chunk))] * k
                bar.update(task, completed=done)
                for p, (_, _, (act, params)) in enumerate(policies):
                    n = counts[p]
                    if n <= 0:
                        continue
                    out = host_rollout(
                        env, act, params, n, jax.random.fold_in(key, rnd * 64 + p), pool=pool
                    )
                    if not np.all(out["ended"]):
                        raise RuntimeError(f"{spec.env_id}: an episode outlived its limit")
                    steps = out["steps"]
                    for e in range(n):  # one episode at a time, so any count can be kept
                        one = {"steps": jax.tree.map(lambda x, e=e: x[e : e + 1], steps)}
                        per_policy[p].append(flatten(one, discrete=False))
                        lengths[p].append(int(steps["valid"][e].sum()))
                rnd += 1
            bar.update(task, completed=episodes or transitions)
        if episodes is None:  # the fewest episodes per policy that reach the requested rows
            totals = np.cumsum([sum(x[i] for x in lengths) for i in range(m)])
            shares = [int(np.searchsorted(totals, transitions) + 1)] * k
        parts = [ep for eps, n in zip(per_policy, shares, strict=True) for ep in eps[:n]]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


# -------------------------------------------------------------------- networks and updates


class _MLP(nn.Module):
    hidden: tuple[int, ...]
    out: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.out)(x)


class _Actor(nn.Module):
    """``[..., N, O] -> [..., N, A]`` in [-1, 1]; agents share weights and see their id."""

    hidden: tuple[int, ...]
    action_dim: int

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        *batch, n, _ = obs.shape
        x = jnp.concatenate([obs, agent_ids(tuple(batch), n)], axis=-1)
        return jnp.tanh(_MLP(self.hidden, self.action_dim)(x))


class _Critic(nn.Module):
    """Twin ``Q(s, a_1..a_N) -> [2, ...]`` on the state and the joint action."""

    hidden: tuple[int, ...]

    @nn.compact
    def __call__(self, state: jax.Array, actions: jax.Array) -> jax.Array:
        x = jnp.concatenate([state, actions.reshape(*actions.shape[:-2], -1)], axis=-1)
        twin = nn.vmap(
            _MLP,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=2,
        )
        return twin(self.hidden, 1)(x)[..., 0]


@functools.lru_cache(maxsize=16)
def _nets(cfg: TD3, spec: EnvSpec) -> tuple[_Actor, _Critic]:
    return _Actor(tuple(cfg.hidden), spec.action_dim), _Critic(tuple(cfg.hidden))


@functools.lru_cache(maxsize=16)
def _init_fn(cfg: TD3, spec: EnvSpec):
    """Jitted ``key -> params``: networks, their targets and optimiser states (eager flax
    init dispatches op by op, which costs seconds)."""
    actor, critic = _nets(cfg, spec)
    n = spec.num_agents
    opt = optax.adam(cfg.lr)

    @jax.jit
    def init(key):
        k_a, k_c = jax.random.split(key)
        pa = actor.init(k_a, jnp.zeros((1, n, spec.obs_dim)))
        pc = critic.init(k_c, jnp.zeros((1, spec.state_dim)), jnp.zeros((1, n, spec.action_dim)))
        return {
            "actor": pa,
            "critic": pc,
            "actor_target": pa,
            "critic_target": pc,
            "actor_opt": opt.init(pa),
            "critic_opt": opt.init(pc),
        }

    return init


def _unit(spec: EnvSpec, actions):
    """Env actions -> [-1, 1]."""
    low, high = jnp.asarray(spec.action_low), jnp.asarray(spec.action_high)
    return 2 * (actions - low) / (high - low) - 1


def _env_actions(unit, low, high):
    """[-1, 1] -> env actions, clipped so rounding never leaves the bounds."""
    return jnp.clip(low + (unit + 1) * 0.5 * (high - low), low, high)


@functools.lru_cache(maxsize=16)
def _update_fn(cfg: TD3, spec: EnvSpec):
    """Jitted ``(params, batch, key, iteration) -> (params, metrics)``: ``K`` updates in one
    scan, the batch ``[K / policy_delay, policy_delay, B, ...]``."""
    actor, critic = _nets(cfg, spec)
    opt = optax.adam(cfg.lr)

    def critic_step(p, b, key):
        a = _unit(spec, b["action"])
        noise = cfg.policy_noise * jax.random.normal(key, a.shape)
        noise = jnp.clip(noise, -cfg.noise_clip, cfg.noise_clip)
        a2 = jnp.clip(actor.apply(p["actor_target"], b["next_obs"]) + noise, -1.0, 1.0)
        q2 = critic.apply(p["critic_target"], b["next_state"], a2).min(axis=0)
        y = b["reward"] + cfg.gamma * (1.0 - b["terminal"]) * q2

        def loss(pc):
            q = critic.apply(pc, b["state"], a)
            return ((q - y) ** 2).mean(axis=-1).sum(), q.mean()

        (value, q), grads = jax.value_and_grad(loss, has_aux=True)(p["critic"])
        updates, p_opt = opt.update(grads, p["critic_opt"], p["critic"])
        p = {**p, "critic": optax.apply_updates(p["critic"], updates), "critic_opt": p_opt}
        return p, value, q

    def actor_step(p, b):
        def loss(pa):
            return -critic.apply(p["critic"], b["state"], actor.apply(pa, b["obs"]))[0].mean()

        value, grads = jax.value_and_grad(loss)(p["actor"])
        updates, a_opt = opt.update(grads, p["actor_opt"], p["actor"])
        pa = optax.apply_updates(p["actor"], updates)

        def polyak(t, o):
            return jax.tree.map(lambda x, y: (1 - cfg.tau) * x + cfg.tau * y, t, o)

        p = {
            **p,
            "actor": pa,
            "actor_opt": a_opt,
            "actor_target": polyak(p["actor_target"], pa),
            "critic_target": polyak(p["critic_target"], p["critic"]),
        }
        return p, value

    def body(p, xs):
        group, key = xs
        keys = jax.random.split(key, cfg.policy_delay)
        losses, qs = [], []
        for j in range(cfg.policy_delay):
            b = jax.tree.map(lambda x, j=j: x[j], group)
            p, value, q = critic_step(p, b, keys[j])
            losses.append(value)
            qs.append(q)
        p, a_loss = actor_step(p, b)
        return p, (jnp.mean(jnp.stack(losses)), jnp.mean(jnp.stack(qs)), a_loss)

    @jax.jit
    def update(params, batch, key, iteration):
        key = jax.random.fold_in(jax.random.fold_in(key, 4), iteration)
        groups = batch["reward"].shape[0]
        params, (c_loss, q, a_loss) = jax.lax.scan(
            body, params, (batch, jax.random.split(key, groups))
        )
        return params, {"critic_loss": c_loss.mean(), "q": q.mean(), "actor_loss": a_loss.mean()}

    return update


@functools.lru_cache(maxsize=16)
def _explore_fn(cfg: TD3, spec: EnvSpec):
    """Jitted ``(actor, key, iteration, obs [E, N, O]) -> env actions``: the actor plus
    exploration noise."""
    act = _policy_act(cfg, spec)
    params = cfg._behaviour(spec, None)

    @jax.jit
    def explore(actor, key, iteration, obs):
        key = jax.random.fold_in(jax.random.fold_in(key, 2), iteration)
        return act({**params, "actor": actor}, key, _Obs(obs))

    return explore


class _Obs(NamedTuple):
    """The one TimeStep field the policy reads."""

    observations: Any


@functools.lru_cache(maxsize=16)
def _policy_act(cfg: TD3, spec: EnvSpec):
    """The behaviour policy as a host_rollout ``act``: ``params`` holds ``actor``, ``noise``
    (std) and the action bounds."""
    actor = _nets(cfg, spec)[0]

    def act(params, key, ts):
        unit = actor.apply(params["actor"], ts.observations)
        unit = jnp.clip(unit + params["noise"] * jax.random.normal(key, unit.shape), -1.0, 1.0)
        return _env_actions(unit, params["low"], params["high"])

    return act


def _random_act(params, key, ts):
    """Uniform actions within ``params["low"/"high"]`` for every agent of every episode."""
    low, high = jnp.asarray(params["low"]), jnp.asarray(params["high"])
    shape = (*ts.observations.shape[:-1], low.shape[0])
    return jax.random.uniform(key, shape, minval=low, maxval=high)


def load_snapshot(cfg: TD3, spec: EnvSpec, directory: Path, index: int) -> Any:
    """The actor parameters of snapshot ``index`` saved by :meth:`TD3.fit`."""
    template = _init_fn(cfg, spec)(jax.random.PRNGKey(0))["actor"]
    raw = (Path(directory) / "snapshots" / f"{index:04d}.msgpack").read_bytes()
    return serialization.from_bytes(template, raw)


# -------------------------------------------------------------------- replay buffer


class _Replay:
    """Observations stored once in generation order (see the module docstring)."""

    def __init__(self, spec: EnvSpec, capacity: int):
        n, o, a = spec.num_agents, spec.obs_dim, spec.action_dim
        self.data = {
            "obs": np.zeros((capacity, n, o), np.float32),
            "state": np.zeros((capacity, spec.state_dim), np.float32),
            "action": np.zeros((capacity, n, a), np.float32),
            "reward": np.zeros(capacity, np.float32),
            "terminal": np.zeros(capacity, bool),
            "truncation": np.zeros(capacity, bool),
            "nxt": np.full(capacity, -1, np.int64),
            "episode": np.full(capacity, -1, np.int64),
            "final": np.zeros(capacity, bool),
            "step": np.zeros(capacity, np.int64),
        }
        self.valid = np.zeros(capacity, np.int64)  # rows whose next observation is known
        self.size = 0
        self.nvalid = 0

    def _reserve(self, rows: int) -> None:
        cap = len(self.valid)
        if self.size + rows <= cap:
            return
        new = max(2 * cap, self.size + rows)
        for name, arr in self.data.items():
            grown = np.zeros((new, *arr.shape[1:]), arr.dtype)
            if name in ("nxt", "episode"):
                grown[:] = -1
            grown[: self.size] = arr[: self.size]
            self.data[name] = grown
        valid = np.zeros(new, np.int64)
        valid[: self.nvalid] = self.valid[: self.nvalid]
        self.valid = valid

    def append(self, obs, state, episode, final, step) -> np.ndarray:
        """New rows (observations); returns their indices."""
        k = len(obs)
        self._reserve(k)
        rows = np.arange(self.size, self.size + k)
        d = self.data
        d["obs"][rows], d["state"][rows] = obs, state
        d["episode"][rows], d["final"][rows], d["step"][rows] = episode, final, step
        self.size += k
        return rows

    def link(self, rows, nxt) -> None:
        self.data["nxt"][rows] = nxt
        self.valid[self.nvalid : self.nvalid + len(rows)] = rows
        self.nvalid += len(rows)

    def sample(self, rng: np.random.Generator, k: int, batch: int, delay: int) -> dict:
        idx = self.valid[rng.integers(0, self.nvalid, size=(k // delay, delay, batch))]
        d = self.data
        nxt = d["nxt"][idx]
        return {
            "obs": d["obs"][idx],
            "state": d["state"][idx],
            "action": d["action"][idx],
            "reward": d["reward"][idx],
            "terminal": d["terminal"][idx].astype(np.float32),
            "next_obs": d["obs"][nxt],
            "next_state": d["state"][nxt],
        }

    def arrays(self) -> dict[str, np.ndarray]:
        out = {f"buffer_{k}": v[: self.size] for k, v in self.data.items()}
        out["buffer_valid"] = self.valid[: self.nvalid]
        return out

    @classmethod
    def from_arrays(cls, spec: EnvSpec, arrays, capacity: int) -> _Replay:
        size, nvalid = len(arrays["buffer_obs"]), len(arrays["buffer_valid"])
        replay = cls(spec, max(capacity, size + 1))
        for name in replay.data:
            replay.data[name][:size] = arrays[f"buffer_{name}"]
        replay.valid[:nvalid] = arrays["buffer_valid"]
        replay.size, replay.nvalid = size, nvalid
        return replay


def _replay_episodes(
    directory: Path,
    spec: EnvSpec,
    until: int,
    transitions: int | None,
    episodes: int | None,
    seed: int,
) -> dict[str, np.ndarray]:
    """Dataset arrays of the replay buffer's episodes that started before env step ``until``
    and are complete (one that was running at ``until`` is kept whole): all of them if they fit
    in ``transitions`` rows (or ``episodes`` episodes), else a random subset, kept in time
    order, that does (at least one episode)."""
    with np.load(Path(directory) / CHECKPOINT) as ck:
        d = {k: ck[f"buffer_{k}"] for k in (*_BUFFER, *_LINKS)}
    count = int(d["episode"].max()) + 1
    start = np.full(count, np.iinfo(np.int64).max)
    np.minimum.at(start, d["episode"], d["step"])  # an episode's first row is its reset
    ended = np.zeros(count, bool)
    ended[d["episode"][d["final"]]] = True  # episodes cut by a resume never end
    chosen = np.flatnonzero(ended & (start < until))
    if len(chosen) == 0:
        raise RuntimeError(f"no complete episode of the replay buffer started before step {until}")
    lengths = np.bincount(d["episode"][~d["final"]], minlength=count)[chosen]
    order = np.random.default_rng(seed).permutation(len(chosen))
    if episodes is not None:
        fits = np.arange(len(chosen)) < episodes
    else:
        fits = np.cumsum(lengths[order]) <= transitions
    fits[0] = True
    episodes = np.sort(chosen[order[fits]])
    rows = np.flatnonzero(np.isin(d["episode"], episodes))
    rows = rows[np.lexsort((rows, d["episode"][rows]))]  # episode by episode, in time order
    steps, finals = rows[~d["final"][rows]], rows[d["final"][rows]]
    return {
        "observations": d["obs"][steps],
        "states": d["state"][steps],
        "actions": d["action"][steps],
        "rewards": d["reward"][steps],
        "terminals": d["terminal"][steps],
        "truncations": d["truncation"][steps],
        "final_observations": d["obs"][finals],
        "final_states": d["state"][finals],
    }


# -------------------------------------------------------------------- training state


class _Interrupts:
    """Turn the first Ctrl-C into a flag the loop checks between iterations (so the checkpoint
    is consistent); a second one interrupts at once."""

    def __init__(self):
        self.flag = False
        self._old = None

    def _handle(self, signum, frame):
        self.flag = True
        signal.signal(signal.SIGINT, self._old)

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


@dataclasses.dataclass
class _Run:
    """Everything ``fit`` checkpoints."""

    cfg: TD3
    spec: EnvSpec
    seed: int
    params: Any
    replay: _Replay
    rng: np.random.Generator
    env_steps: int = 0
    updates: int = 0
    iteration: int = 0
    episodes: int = 0
    snapshots: list[Snapshot] = dataclasses.field(default_factory=list)
    random_return: float | None = None
    random_std: float = 0.0
    recent: list[float] = dataclasses.field(default_factory=list)
    metrics: Any = None
    slots: Any = None  # per environment: [row of its current observation, episode, return]

    @classmethod
    def fresh(cls, cfg: TD3, spec: EnvSpec, seed: int) -> _Run:
        params = _init_fn(cfg, spec)(jax.random.PRNGKey(seed))
        replay = _Replay(spec, cfg.env_steps + cfg.env_steps // 100 + 2 * cfg.envs)
        return cls(cfg, spec, seed, params, replay, np.random.default_rng(seed))

    def _config(self) -> str:
        return json.dumps(
            {"td3": dataclasses.asdict(self.cfg), "spec": self.spec.to_dict(), "seed": self.seed},
            sort_keys=True,
        )

    def save(self, directory: Path) -> None:
        """Write the checkpoint atomically (temporary file, fsync, rename)."""
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "config": self._config(),
            "env_steps": self.env_steps,
            "updates": self.updates,
            "iteration": self.iteration,
            "episodes": self.episodes,
            "snapshots": [dataclasses.asdict(s) for s in self.snapshots],
            "random_return": self.random_return,
            "random_std": self.random_std,
            "recent": self.recent,
            "rng": self.rng.bit_generator.state,
        }
        params = serialization.msgpack_serialize(
            serialization.to_state_dict(jax.device_get(self.params))
        )
        arrays = {
            "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8),
            "params": np.frombuffer(params, np.uint8),
            **self.replay.arrays(),
        }
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{CHECKPOINT}.")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, directory / CHECKPOINT)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, cfg: TD3, spec: EnvSpec, directory: Path, seed: int) -> _Run:
        with np.load(directory / CHECKPOINT) as ck:
            arrays = {k: ck[k] for k in ck.files}
        meta = json.loads(arrays.pop("meta").tobytes())
        run = cls.fresh(cfg, spec, seed)
        if meta["config"] != run._config():
            raise ValueError(
                f"{directory / CHECKPOINT} belongs to another TD3 config, task or seed; "
                "delete it to start over"
            )
        raw = serialization.msgpack_restore(arrays.pop("params").tobytes())
        run.params = serialization.from_state_dict(run.params, raw)
        run.replay = _Replay.from_arrays(spec, arrays, len(run.replay.valid))
        run.rng.bit_generator.state = meta["rng"]
        for name in ("env_steps", "updates", "iteration", "episodes", "random_std", "recent"):
            setattr(run, name, meta[name])
        run.random_return = meta["random_return"]
        run.snapshots = [Snapshot(**s) for s in meta["snapshots"]]
        return run

    def show(self) -> dict[str, str]:
        ret = f"return {np.mean(self.recent):.0f}" if self.recent else "return -"
        snap = f"snapshot {self.snapshots[-1].return_mean:.0f}" if self.snapshots else ""
        return {"ret": ret, "snap": snap}

    def _reset_keys(self, count: int) -> np.ndarray:
        return self.rng.integers(0, 2**32, size=(count, 2), dtype=np.uint32)

    def start_episodes(self, pool: HostPool) -> dict[str, Any]:
        """Fresh episodes in every environment (episodes cut by a resume are abandoned: their
        rows stay usable for updates but never form a dataset episode)."""
        cur = pool.reset(self._reset_keys(self.cfg.envs))
        ids = self.episodes + np.arange(self.cfg.envs)
        self.episodes += self.cfg.envs
        rows = self.replay.append(
            cur["observations"], cur["state"], ids, False, np.full(self.cfg.envs, self.env_steps)
        )
        self.slots = {"row": rows, "episode": ids, "return": np.zeros(self.cfg.envs)}
        return cur

    def record(self, cur, actions, nxt, pool: HostPool) -> dict[str, Any]:
        """Store one step of every environment; restart the environments whose episode ended."""
        e = self.cfg.envs
        d, s = self.replay.data, self.slots
        rows = s["row"]
        d["action"][rows], d["reward"][rows] = actions, nxt["reward"]
        d["terminal"][rows], d["truncation"][rows] = nxt["terminal"], nxt["truncation"]
        d["step"][rows] = self.env_steps + np.arange(e)
        self.env_steps += e
        self.iteration += 1
        done = nxt["terminal"] | nxt["truncation"]
        new = self.replay.append(
            nxt["observations"], nxt["state"], s["episode"], done, np.full(e, self.env_steps)
        )
        self.replay.link(rows, new)
        s["return"] = s["return"] + nxt["reward"]
        if not done.any():
            s["row"] = new
            return nxt
        self.recent = (self.recent + s["return"][done].tolist())[-10:]
        keys = self._reset_keys(e)
        restarted = pool.reset(keys, done)
        ids = self.episodes + np.arange(done.sum())
        self.episodes += int(done.sum())
        s["episode"] = s["episode"].copy()
        s["episode"][done] = ids
        s["return"] = np.where(done, 0.0, s["return"])
        first = self.replay.append(
            restarted["observations"][done],
            restarted["state"][done],
            ids,
            False,
            np.full(len(ids), self.env_steps),
        )
        s["row"] = np.where(done, 0, new)
        s["row"][done] = first
        return restarted

    def snapshot(self, env, pool: HostPool, directory: Path, key) -> None:
        """Evaluate the behaviour policy (noisy actor) and save its actor as a snapshot."""
        index = len(self.snapshots)
        cfg, spec = self.cfg, self.spec
        params = cfg._behaviour(spec, self.params["actor"])
        out = host_rollout(
            env,
            _policy_act(cfg, spec),
            params,
            cfg.eval_episodes,
            jax.random.fold_in(key, index),
            record=False,
            pool=pool,
        )
        raw = serialization.to_bytes(jax.device_get(self.params["actor"]))
        write_atomic(directory / "snapshots" / f"{index:04d}.msgpack", raw)
        returns = np.asarray(out["returns"], np.float64)
        self.snapshots.append(
            Snapshot(index, self.env_steps, float(returns.mean()), float(returns.std()))
        )
