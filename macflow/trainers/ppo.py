"""IPPO / MAPPO behaviour trainer for the JAX suites (MPE, SMAX), the whole update loop under jit.

PPO (Schulman et al. 2017, clipped objective) with the multi-agent choices of MAPPO (Yu et al.
2022): one actor shared by all agents (plus a one-hot agent id), each agent acting on its own
observation only, so the behaviour policy is decentralised like the policies learnt from its data;
the critic sees the global state (``mappo``) or each agent's own observation (``ippo``, de Witt et
al. 2020). Continuous actions: a Gaussian with a learnt state-independent log-std, clipped to the
action bounds when sent to the environment. Discrete actions: a categorical over legal actions.

Advantages are GAE(lambda). Our environments do not auto-reset, so the value of the true next
observation is computed before each reset: truncated episodes bootstrap from it, terminal ones do
not. Snapshots of the actor along training, with their returns, make the quality levels of
:mod:`macflow.trainers.qualities`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any, ClassVar, Literal

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
from macflow.envs.rollout import make_rollout
from macflow.files import write_atomic
from macflow.progress import progress_bar
from macflow.spec import EnvSpec, TimeStep
from macflow.trainers.qualities import Curve, Snapshot, check_quality

LOG_2PI_E = math.log(2 * math.pi * math.e)


@dataclasses.dataclass(frozen=True)
class PPO:
    """IPPO/MAPPO hyper-parameters (defaults: MPE/SMAX-sized, minutes on 2 CPU cores)."""

    name: ClassVar[str] = "ppo"

    critic: Literal["mappo", "ippo"] = "mappo"
    """``mappo``: the critic sees the global state; ``ippo``: each agent's own observation."""
    env_steps: int = 3_000_000
    """Total joint environment steps of training."""
    num_envs: int = 64
    """Environments stepped in parallel (vmap)."""
    rollout: int = 50
    """Steps per environment between updates."""
    epochs: int = 4
    """Passes over each rollout."""
    minibatches: int = 4
    """Minibatches per pass."""
    lr: float = 1e-3
    """Adam learning rate (annealed linearly to 0)."""
    gamma: float = 0.99
    """Discount."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip: float = 0.2
    """PPO ratio clip."""
    entropy: float = 0.01
    """Entropy bonus weight."""
    value_coef: float = 0.5
    """Value loss weight."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip."""
    hidden: tuple[int, ...] = (128, 128)
    """Hidden widths of actor and critic."""
    snapshots: int = 40
    """Actor snapshots saved (and evaluated) evenly along training."""
    eval_episodes: int = 128
    """Episodes per snapshot evaluation."""
    random_episodes: int = 1000
    """Episodes of the uniformly random policy (the random reference return)."""

    @classmethod
    def quick(cls) -> PPO:
        return cls(env_steps=200_000, snapshots=10, eval_episodes=64, random_episodes=200)

    @property
    def schedule(self) -> list[int]:
        """Updates done at each snapshot: 0, then quadratically spaced up to the total, so the
        early curve, where returns climb fastest, has the most snapshots to pick levels from."""
        updates = max(1, self.env_steps // (self.num_envs * self.rollout))
        count = min(self.snapshots, updates)
        bounds = [0]
        for i in range(1, count + 1):
            bounds.append(max(bounds[-1] + 1, round(updates * (i / count) ** 2)))
        return bounds

    # -- training -------------------------------------------------------------------------

    def fit(self, env, seed: int, directory: Path, console: Any = None) -> Curve:
        """Train (resuming from ``directory``), saving snapshots; returns the learning curve."""
        directory = Path(directory)
        done = directory / "curve.json"
        if done.exists():
            return Curve.from_json(done.read_text())
        spec = env.spec
        nets = _Nets.build(spec, self)
        bounds = self.schedule
        count = len(bounds) - 1
        chunk = jax.jit(functools.partial(_train_chunk, self, env, nets, bounds[-1]))
        evaluate = _evaluator(env, nets, self.eval_episodes)
        ckpt = directory / "trainer.msgpack"
        runner = _init_runner(self, env, nets, seed)
        snaps: list[Snapshot] = []
        random_return = random_std = None
        if ckpt.exists():
            raw = serialization.msgpack_restore(ckpt.read_bytes())
            runner = serialization.from_state_dict(runner, raw["runner"])
            snaps = [Snapshot(**s) for s in raw["snapshots"]]
            random_return, random_std = raw["random"]
        if random_return is None:
            returns = _random_returns(env, self.random_episodes, seed)
            random_return, random_std = float(returns.mean()), float(returns.std())
        steps_per_update = self.num_envs * self.rollout
        with progress_bar("ret", console=console) as bar:
            task = bar.add_task(
                f"train {spec.env_id} ({self.critic})",
                total=count + 1,
                completed=len(snaps),
                ret="",
            )
            while len(snaps) <= count:
                i = len(snaps)
                if i > 0:
                    runner = chunk(runner, jnp.int32(bounds[i] - bounds[i - 1]))
                key = jax.random.fold_in(jax.random.PRNGKey(seed), 10_000 + i)
                returns = np.asarray(evaluate(key, runner["params"]["actor"]))
                snap = Snapshot(
                    i, bounds[i] * steps_per_update, float(returns.mean()), float(returns.std())
                )
                actor = serialization.to_bytes(runner["params"]["actor"])
                write_atomic(directory / "snapshots" / f"{i:04d}.msgpack", actor)
                snaps.append(snap)
                state = {
                    "runner": serialization.to_state_dict(runner),
                    "snapshots": [dataclasses.asdict(s) for s in snaps],
                    "random": [random_return, random_std],
                }
                write_atomic(ckpt, serialization.msgpack_serialize(state))
                bar.update(task, completed=i + 1, ret=f"return {snap.return_mean:.3g}")
        curve = Curve(tuple(snaps), random_return, random_std)
        write_atomic(done, curve.to_json())
        ckpt.unlink()
        return curve

    # -- datasets -------------------------------------------------------------------------

    def collect(
        self,
        env,
        directory: Path,
        curve: Curve,
        quality: str,
        transitions: int | None,
        seed: int,
        console: Any = None,
        episodes: int | None = None,
    ) -> Dataset:
        """One quality level's dataset of about ``transitions`` rows (whole episodes), or of
        ``episodes`` episodes. Multi-policy levels split the size evenly between policies."""
        spec = env.spec
        check_quality(spec.env_id, spec.discrete, quality)
        nets = _Nets.build(spec, self)
        template = nets.actor_params(jax.random.PRNGKey(0))

        def snapshot(s: Snapshot):
            raw = (Path(directory) / "snapshots" / f"{s.index:04d}.msgpack").read_bytes()
            return serialization.from_bytes(template, raw)

        if quality in ("medium-replay", "replay"):
            last = curve.for_quality("medium").index if quality == "medium-replay" else None
            sources = [s for s in curve.snapshots if last is None or s.index <= last]
        elif quality == "medium-expert":
            sources = [curve.for_quality("medium"), curve.expert]
        elif quality == "random":
            sources = [None]
        else:
            sources = [curve.for_quality(quality)]
        k = len(sources)
        if episodes is not None:
            shares = [episodes // k + (j < episodes % k) for j in range(k)]
            chunk = max(shares)
        else:
            shares = [transitions // k + (j < transitions % k) for j in range(k)]
            chunk = -(-max(shares) // spec.episode_limit) + 8
        run = _collector(env, nets, min(1000, chunk))
        parts, used = [], []
        with progress_bar(console=console) as bar:
            task = bar.add_task(f"collect {spec.env_id} {quality}", total=sum(shares))
            for j, (s, share) in enumerate(zip(sources, shares, strict=True)):
                if share == 0:
                    continue
                params = template if s is None else snapshot(s)
                key = jax.random.fold_in(jax.random.PRNGKey(seed), j)
                by_episode = episodes is not None
                parts.append(_rows(run, key, params, s is None, share, by_episode, spec.discrete))
                used.append(None if s is None else dataclasses.asdict(s))
                bar.advance(task, share)
        arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        provenance = {
            "method": "collect",
            "behaviour": "random" if quality == "random" else f"{self.name}-{self.critic}",
            "behaviour_config": dataclasses.asdict(self),
            "snapshots": used,
            "trainer_dir": str(directory),
            "seed": seed,
            "macflow_version": __version__,
            "created_at": created_now(),
        }
        return Dataset(
            arrays=arrays,
            spec=spec,
            quality=quality,
            provenance=provenance,
            env_kwargs=env_kwargs(env),
            reference_returns=curve.reference_returns(),
        )


# -- networks ---------------------------------------------------------------------------------


class _Actor(nn.Module):
    hidden: tuple[int, ...]
    actions: int
    discrete: bool

    @nn.compact
    def __call__(self, x):
        for w in self.hidden:
            x = nn.tanh(nn.Dense(w, kernel_init=nn.initializers.orthogonal(math.sqrt(2)))(x))
        out = nn.Dense(self.actions, kernel_init=nn.initializers.orthogonal(0.01))(x)
        if self.discrete:
            return out, None
        return out, self.param("log_std", nn.initializers.constant(-0.5), (self.actions,))


class _Critic(nn.Module):
    hidden: tuple[int, ...]

    @nn.compact
    def __call__(self, x):
        for w in self.hidden:
            x = nn.tanh(nn.Dense(w, kernel_init=nn.initializers.orthogonal(math.sqrt(2)))(x))
        return nn.Dense(1, kernel_init=nn.initializers.orthogonal(1.0))(x)[..., 0]


@dataclasses.dataclass(frozen=True)
class _Nets:
    spec: EnvSpec
    actor: _Actor
    critic: _Critic
    central: bool

    @classmethod
    def build(cls, spec: EnvSpec, cfg: PPO) -> _Nets:
        actor = _Actor(cfg.hidden, spec.action_dim, spec.discrete)
        return cls(spec, actor, _Critic(cfg.hidden), cfg.critic == "mappo")

    def actor_in(self, obs):
        ids = jnp.broadcast_to(jnp.eye(self.spec.num_agents), (*obs.shape[:-1], obs.shape[-2]))
        return jnp.concatenate([obs, ids], -1)

    def critic_in(self, ts: TimeStep):
        if not self.central:
            return self.actor_in(ts.observations)
        n = self.spec.num_agents
        state = jnp.broadcast_to(
            ts.state[..., None, :], (*ts.state.shape[:-1], n, ts.state.shape[-1])
        )
        return self.actor_in(state)

    def actor_params(self, key):
        n, o = self.spec.num_agents, self.spec.obs_dim
        return self.actor.init(key, jnp.zeros((n, o + n)))

    def critic_params(self, key):
        n = self.spec.num_agents
        width = (self.spec.state_dim if self.central else self.spec.obs_dim) + n
        return self.critic.init(key, jnp.zeros((n, width)))

    def dist(self, params, obs, legal):
        """Policy output for ``obs [..., N, O]``: (logits or mean, log_std)."""
        out, log_std = self.actor.apply(params, self.actor_in(obs))
        if self.spec.discrete:
            out = jnp.where(legal, out, -1e9)
        return out, log_std

    def sample(self, params, key, obs, legal):
        """(raw action, log-prob) per agent; raw continuous actions are unclipped."""
        out, log_std = self.dist(params, obs, legal)
        if self.spec.discrete:
            a = jax.random.categorical(key, out).astype(jnp.int32)
            return a, self.log_prob(out, log_std, a)
        a = out + jnp.exp(log_std) * jax.random.normal(key, out.shape)
        return a, self.log_prob(out, log_std, a)

    def log_prob(self, out, log_std, a):
        if self.spec.discrete:
            logp = jax.nn.log_softmax(out)
            return jnp.take_along_axis(logp, a[..., None], -1)[..., 0]
        z = (a - out) / jnp.exp(log_std)
        return jnp.sum(-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi), -1)

    def entropy(self, out, log_std):
        if self.spec.discrete:
            logp = jax.nn.log_softmax(out)
            return -jnp.sum(jnp.where(out > -1e8, jnp.exp(logp) * logp, 0.0), -1)
        return jnp.broadcast_to(jnp.sum(log_std + 0.5 * LOG_2PI_E), out.shape[:-1])

    def env_action(self, a):
        if self.spec.discrete:
            return a
        return jnp.clip(a, jnp.asarray(self.spec.action_low), jnp.asarray(self.spec.action_high))


def _optimiser(cfg: PPO, total_updates: int):
    steps = total_updates * cfg.epochs * cfg.minibatches
    schedule = optax.linear_schedule(cfg.lr, 0.0, steps)
    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.adam(schedule, eps=1e-5))


def _init_runner(cfg: PPO, env, nets: _Nets, seed: int) -> dict:
    key = jax.random.PRNGKey(seed)
    k_a, k_c, k_env, key = jax.random.split(key, 4)
    params = {"actor": nets.actor_params(k_a), "critic": nets.critic_params(k_c)}
    total = cfg.schedule[-1]
    opt_state = _optimiser(cfg, total).init(params)
    env_state, ts = jax.vmap(env.reset)(jax.random.split(k_env, cfg.num_envs))
    return {"params": params, "opt": opt_state, "env": env_state, "ts": ts, "key": key}


def _train_chunk(cfg: PPO, env, nets: _Nets, total_updates: int, runner, n):
    """``n`` (traced) PPO updates, each a rollout and epochs of minibatch steps, in one loop."""
    tx = _optimiser(cfg, total_updates)
    update = functools.partial(_update, cfg, env, nets, tx)
    return jax.lax.fori_loop(0, n, update, runner)


def _value(nets: _Nets, params, ts):
    """The critic's value of every agent in ``ts``."""
    return nets.critic.apply(params["critic"], nets.critic_in(ts))


def _env_step(cfg: PPO, env, nets: _Nets, carry, key):
    """One step of every environment (scan body): the step's record, and environments that
    ended reset; the values of both the observation and the true next one are recorded."""
    reset, step = jax.vmap(env.reset), jax.vmap(env.step)
    params, env_state, ts = carry
    k_act, k_step, k_reset = jax.random.split(key, 3)
    a, logp = nets.sample(params["actor"], k_act, ts.observations, ts.legal_actions)
    keys = jax.random.split(k_step, cfg.num_envs)
    new_state, new_ts = step(keys, env_state, nets.env_action(a))
    r_state, r_ts = reset(jax.random.split(k_reset, cfg.num_envs))
    done = new_ts.done

    def pick(x, y):
        return jnp.where(done.reshape(done.shape + (1,) * (x.ndim - 1)), x, y)

    out = {
        "ts": ts,
        "action": a,
        "logp": logp,
        "value": _value(nets, params, ts),
        "next_value": _value(nets, params, new_ts),
        "reward": new_ts.reward,
        "terminal": new_ts.terminal,
        "done": done,
    }
    carry = (params, jax.tree.map(pick, r_state, new_state), jax.tree.map(pick, r_ts, new_ts))
    return carry, out


def _gae(cfg: PPO, traj):
    """GAE(lambda) advantages of a rollout ``[T, E, N]``: truncations bootstrap from the next
    value, terminals do not, and no advantage flows across an episode's end."""

    def back(adv, t):
        delta = (
            t["reward"][:, None]
            + cfg.gamma * (1.0 - t["terminal"][:, None]) * t["next_value"]
            - t["value"]
        )
        adv = delta + cfg.gamma * cfg.gae_lambda * (1.0 - t["done"][:, None]) * adv
        return adv, adv

    init = jnp.zeros_like(traj["value"][0])
    _, adv = jax.lax.scan(back, init, traj, reverse=True)
    return adv


def _loss(cfg: PPO, nets: _Nets, params, batch):
    """Clipped PPO objective, value loss and entropy bonus of one minibatch."""
    ts = batch["ts"]
    out, log_std = nets.dist(params["actor"], ts.observations, ts.legal_actions)
    logp = nets.log_prob(out, log_std, batch["action"])
    ratio = jnp.exp(logp - batch["logp"])
    adv = batch["adv"]
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    clipped = jnp.clip(ratio, 1 - cfg.clip, 1 + cfg.clip)
    pg = -jnp.mean(jnp.minimum(ratio * adv, clipped * adv))
    v = _value(nets, params, ts)
    v_loss = 0.5 * jnp.mean((v - batch["target"]) ** 2)
    ent = jnp.mean(nets.entropy(out, log_std))
    return pg + cfg.value_coef * v_loss - cfg.entropy * ent


def _update(cfg: PPO, env, nets: _Nets, tx, _, runner):
    """One PPO update (fori_loop body): a rollout, its advantages, then the epochs."""
    key, k_roll, k_perm = jax.random.split(runner["key"], 3)
    carry = (runner["params"], runner["env"], runner["ts"])
    (_, env_state, ts), traj = jax.lax.scan(
        functools.partial(_env_step, cfg, env, nets), carry, jax.random.split(k_roll, cfg.rollout)
    )
    adv = _gae(cfg, traj)
    batch = {
        "ts": traj["ts"],
        "action": traj["action"],
        "logp": traj["logp"],
        "adv": adv,
        "target": adv + traj["value"],
    }
    size = cfg.rollout * cfg.num_envs
    batch = jax.tree.map(lambda x: x.reshape(size, *x.shape[2:]), batch)
    epoch = functools.partial(_epoch, cfg, nets, tx, batch)
    (params, opt), _ = jax.lax.scan(
        epoch, (runner["params"], runner["opt"]), jax.random.split(k_perm, cfg.epochs)
    )
    return {"params": params, "opt": opt, "env": env_state, "ts": ts, "key": key}


def _epoch(cfg: PPO, nets: _Nets, tx, batch, state, key):
    """One pass over the rollout ``batch`` (scan body): shuffled, in minibatch gradient steps."""
    size = cfg.rollout * cfg.num_envs
    perm = jax.random.permutation(key, size)
    shuffled = jax.tree.map(lambda x: x[perm].reshape(cfg.minibatches, -1, *x.shape[1:]), batch)
    loss = functools.partial(_loss, cfg, nets)

    def minibatch(state, mb):
        params, opt = state
        grads = jax.grad(loss)(params, mb)
        updates, opt = tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), opt), None

    return jax.lax.scan(minibatch, state, shuffled)[0], None


# -- rollouts of snapshots ----------------------------------------------------------------------


def _policy_act(nets: _Nets):
    def act(params, key, pstate, env_state, ts):
        a, _ = nets.sample(params, key, ts.observations, ts.legal_actions)
        return nets.env_action(a), pstate

    return act


def _random_act(spec: EnvSpec):
    def act(params, key, pstate, env_state, ts):
        if spec.discrete:
            logits = jnp.where(ts.legal_actions, 0.0, -jnp.inf)
            return jax.random.categorical(key, logits).astype(jnp.int32), pstate
        low, high = jnp.asarray(spec.action_low), jnp.asarray(spec.action_high)
        return jax.random.uniform(key, spec.action_shape, minval=low, maxval=high), pstate

    return act


def _no_state(params, key, env_state, ts):
    return ()


def _evaluator(env, nets: _Nets, episodes: int):
    run = make_rollout(env, _no_state, _policy_act(nets), episodes, record=False)
    return lambda key, params: run(key, params)["returns"]


def _random_returns(env, episodes: int, seed: int) -> np.ndarray:
    run = make_rollout(env, _no_state, _random_act(env.spec), episodes, record=False)
    return np.asarray(run(jax.random.PRNGKey(seed + 7919))["returns"])


def _collector(env, nets: _Nets, episodes: int):
    policy = make_rollout(env, _no_state, _policy_act(nets), episodes)
    uniform = make_rollout(env, _no_state, _random_act(env.spec), episodes)
    return policy, uniform


def _rows(run, key, params, random: bool, size: int, by_episode: bool, discrete: bool) -> dict:
    """Whole episodes of one policy: ``size`` episodes, or at least ``size`` rows."""
    policy, uniform = run
    parts, got, i = [], 0, 0
    while got < size:
        out = jax.device_get((uniform if random else policy)(jax.random.fold_in(key, i), params))
        lengths = np.asarray(out["steps"]["valid"]).sum(1)
        if by_episode:
            keep = min(size - got, len(lengths))
            got += keep
        else:
            keep = min(int(np.searchsorted(np.cumsum(lengths), size - got)) + 1, len(lengths))
            got += int(lengths[:keep].sum())
        out = jax.tree.map(lambda x, k=keep: x[:k], out)
        parts.append(flatten(out, discrete))
        i += 1
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
