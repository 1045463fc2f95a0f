"""Batched episodes of host environments (MuJoCo): environments step in worker processes, the
policy acts in the main process on all of them at once (one jitted call per step).

Workers start with ``forkserver`` (``spawn`` where there is none), never ``fork``: the main
process runs JAX, which is not fork-safe. Each worker holds some of the environments and steps
them on command through a pipe; it imports only the environment's module (and what the package
imports with it) and never runs JAX. Workers ignore Ctrl-C: the main process shuts them down
(:class:`HostPool` is a context manager) and they exit on their own if it dies.

:func:`host_rollout` returns what :func:`macflow.envs.rollout.make_rollout` returns, with numpy
arrays: ``returns [E]``, ``ended [E]``, ``final_info`` and with ``record`` the ``steps``
``[E, L, ...]`` (zeros after an episode's end, where ``valid`` is False).
"""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing as mp
import signal
import traceback
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from macflow.envs.base import Env
from macflow.spec import TimeStep

# act(params, key, ts) -> actions, on a TimeStep whose arrays have a leading episode axis [E];
# with a policy state: init(params, key, ts) -> pstate, act(params, key, ts, pstate) ->
# (actions, pstate), all batched over episodes.
HostActFn = Callable[..., Any]
HostInitFn = Callable[[Any, jax.Array, TimeStep], Any]


def _stack(tss: list[TimeStep]) -> dict[str, Any]:
    """TimeSteps of several environments -> one dict of stacked numpy arrays."""
    first = tss[0]
    out = {
        name: np.stack([np.asarray(getattr(ts, name)) for ts in tss])
        for name in ("observations", "state", "reward", "terminal", "truncation")
    }
    out["legal_actions"] = (
        None
        if first.legal_actions is None
        else np.stack([np.asarray(ts.legal_actions) for ts in tss])
    )
    out["info"] = {k: np.stack([np.asarray(ts.info[k]) for ts in tss]) for k in first.info}
    return out


def _serve(conn, env: Env) -> None:
    """Worker loop: ``("reset", keys, mask)``, ``("step", actions, active)`` or ``("close",)``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    envs: list[Env] = []
    states: list[Any] = []
    last: list[TimeStep] = []
    keys = np.zeros((0, 2), np.uint32)
    t = np.zeros(0, np.int64)
    try:
        while True:
            msg = conn.recv()
            if msg[0] == "close":
                break
            try:
                if msg[0] == "reset":
                    _, new, mask = msg
                    if mask is None:  # a new set of episodes, one per key
                        while len(envs) < len(new):
                            envs.append(dataclasses.replace(env))  # a fresh instance: own sim
                        states, last = [None] * len(new), [None] * len(new)
                        keys, t = new.copy(), np.zeros(len(new), np.int64)
                        mask = np.ones(len(new), bool)
                    for i in np.flatnonzero(mask):
                        states[i], last[i] = envs[i].reset(new[i])
                        keys[i], t[i] = new[i], 0
                else:
                    _, actions, active = msg
                    for i in np.flatnonzero(active):
                        t[i] += 1
                        # Host envs get numpy keys: the episode's reset key mixed with the step.
                        k = np.array([keys[i, 0], keys[i, 1] ^ t[i]], np.uint32)
                        states[i], last[i] = envs[i].step(k, states[i], actions[i])
                conn.send(("ok", _stack(last)))
            except Exception:
                conn.send(("error", traceback.format_exc()))
    except (EOFError, OSError):
        pass  # the main process went away
    finally:
        for e in envs:
            close = getattr(e, "close", None)
            if close is not None:
                close()
        conn.close()


def _context(env: Env):
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    # The fork server imports the environment's module once; every worker forks from it.
    ctx.set_forkserver_preload([type(env).__module__])
    return ctx


class HostPool:
    """Worker processes that step copies of ``env``; use as a context manager.

    ``reset(keys)`` starts ``len(keys)`` episodes (split evenly across workers, environments
    made on first use and reused), ``step(actions, active)`` steps the active ones. Both return
    the stacked TimeStep fields as a dict of numpy arrays with a leading episode axis; an
    inactive episode repeats its last TimeStep.
    """

    def __init__(self, env: Env, workers: int = 2):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.env, self.workers = env, workers
        self._procs: list[Any] = []
        self._conns: list[Any] = []
        self._slices: list[slice] = []
        ctx = _context(env)
        try:
            for _ in range(workers):
                ours, theirs = ctx.Pipe()
                proc = ctx.Process(target=_serve, args=(theirs, env), daemon=True)
                proc.start()
                theirs.close()
                self._procs.append(proc)
                self._conns.append(ours)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> HostPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        for conn in self._conns:
            try:
                conn.send(("close",))
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        for conn in self._conns:
            conn.close()
        self._procs, self._conns = [], []

    def _gather(self, used: list[int]) -> dict[str, Any]:
        replies = [self._conns[w].recv() for w in used]  # read all: no reply left behind
        for w, (status, payload) in zip(used, replies, strict=True):
            if status != "ok":
                raise RuntimeError(f"host environment worker {w} failed:\n{payload}")
        parts = [payload for _, payload in replies]
        return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)

    def reset(self, keys: np.ndarray, mask: np.ndarray | None = None) -> dict[str, Any]:
        """Start one episode per key (``[E, 2]`` uint32, see :func:`reset_keys`); with a bool
        ``mask [E]``, restart only those episodes of the current set (the others go on)."""
        if not self._conns:
            raise RuntimeError("the HostPool is closed")
        if mask is None:
            bounds = np.linspace(0, len(keys), self.workers + 1).round().astype(int)
            self._slices = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        elif len(keys) != sum(sl.stop - sl.start for sl in self._slices):
            raise ValueError("a masked reset needs one key per episode of the current set")
        for w in self._used():
            sl = self._slices[w]
            self._conns[w].send(("reset", keys[sl], None if mask is None else mask[sl]))
        return self._gather(self._used())

    def _used(self) -> list[int]:
        return [w for w, sl in enumerate(self._slices) if sl.stop > sl.start]

    def send_step(self, actions: np.ndarray, active: np.ndarray) -> None:
        """Start stepping the episodes where ``active``; collect with :meth:`recv_step`."""
        for w in self._used():
            sl = self._slices[w]
            self._conns[w].send(("step", actions[sl], active[sl]))

    def recv_step(self) -> dict[str, Any]:
        return self._gather(self._used())

    def step(self, actions: np.ndarray, active: np.ndarray) -> dict[str, Any]:
        """Step the active episodes with ``actions [E, ...]``; wait for the results."""
        self.send_step(actions, active)
        return self.recv_step()


def reset_keys(key: jax.Array, num_episodes: int) -> np.ndarray:
    """The reset key of each of :func:`host_rollout`'s episodes, ``[E, 2]`` uint32: episode e
    starts as ``env.reset(reset_keys(key, E)[e])`` would."""
    k_reset = jax.random.split(key)[0]
    return np.asarray(jax.random.key_data(jax.random.split(k_reset, num_episodes)), np.uint32)


@functools.lru_cache(maxsize=64)
def _jitted(act: HostActFn, stateful: bool):
    # One program per policy function: key folding and the policy in one call per step.
    @jax.jit
    def run(params, key, t, ts, pstate):
        key = jax.random.fold_in(key, t)
        return act(params, key, ts, pstate) if stateful else (act(params, key, ts), pstate)

    return run


@functools.lru_cache(maxsize=64)
def _jitted_init(init: HostInitFn):
    return jax.jit(init)


def _timestep(d: dict[str, Any]) -> TimeStep:
    return TimeStep(
        observations=d["observations"],
        state=d["state"],
        legal_actions=d["legal_actions"],
        reward=d["reward"],
        terminal=d["terminal"],
        truncation=d["truncation"],
        info=d["info"],
    )


def host_rollout(
    env: Env,
    act: HostActFn,
    params: Any,
    num_episodes: int,
    key: jax.Array,
    record: bool = True,
    workers: int = 2,
    pool: HostPool | None = None,
    init: HostInitFn | None = None,
) -> dict[str, Any]:
    """Run ``num_episodes`` episodes of a host environment side by side; see the module doc.

    ``act(params, key, ts)`` maps a TimeStep with a leading episode axis to actions
    ``[E, *spec.action_shape]``; it is jitted here (pass the same function object every time so
    the compiled program is reused). Episode e resets with ``reset_keys(key, E)[e]``; the policy
    key of step t is ``fold_in(split(key)[1], t)``. ``pool`` reuses running workers (it must
    step ``env``); without it a pool of ``workers`` processes lives for this call only.
    With ``init``, the policy carries a state: ``init(params, key, ts)`` makes it after the
    resets (key ``fold_in(split(key)[1], L)``) and ``act(params, key, ts, pstate)`` returns
    ``(actions, pstate)``.
    """
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    if pool is None:
        with HostPool(env, min(workers, num_episodes)) as own:
            return host_rollout(env, act, params, num_episodes, key, record, pool=own, init=init)
    spec = env.spec
    e, limit = num_episodes, spec.episode_limit
    k_run = jax.random.split(key)[1]
    run = _jitted(act, init is not None)
    cur = pool.reset(reset_keys(key, e))
    if init is None:
        pstate = None
    else:  # step keys fold in t < L; the init key folds in L
        k_init = jax.random.fold_in(k_run, limit)
        pstate = _jitted_init(init)(params, k_init, _timestep(cur))
    done = np.zeros(e, bool)
    returns = np.zeros(e, np.float32)
    steps: dict[str, Any] = {}
    for t in range(limit):
        actions, pstate = run(params, k_run, t, _timestep(cur), pstate)
        actions = np.asarray(actions)
        if actions.shape != (e, *spec.action_shape):
            raise ValueError(
                f"act returned shape {actions.shape}, expected {(e, *spec.action_shape)}"
            )
        active = ~done
        nxt = pool.step(actions, active)
        if record:
            row = {
                "observations": cur["observations"],
                "state": cur["state"],
                "legal_actions": cur["legal_actions"],
                "actions": actions,
                "rewards": nxt["reward"],
                "terminals": nxt["terminal"],
                "truncations": nxt["truncation"],
                "next_observations": nxt["observations"],
                "next_state": nxt["state"],
                "next_legal_actions": nxt["legal_actions"],
                "info": nxt["info"],
                "valid": active,
            }
            if not steps:  # zeros everywhere, so steps after an episode's end stay zero
                steps = jax.tree.map(lambda x: np.zeros((e, limit, *x.shape[1:]), x.dtype), row)
            for buf, x in zip(jax.tree.leaves(steps), jax.tree.leaves(row), strict=True):
                buf[active, t] = x[active]
        returns += np.where(active, nxt["reward"], 0).astype(np.float32)
        done = done | nxt["terminal"] | nxt["truncation"]
        cur = nxt
        if done.all():
            break
    out = {"returns": returns, "ended": done, "final_info": cur["info"]}
    if record:
        out["steps"] = steps
    return out


@functools.lru_cache(maxsize=64)
def _behaviour_fns(env: Env, behaviour: Any) -> tuple[HostInitFn, HostActFn]:
    """A per-episode :class:`~macflow.envs.base.Behaviour` as batched host init/act (vmapped
    over episodes, each with its own key; host environments have no ``env_state``: None)."""

    def init(params, key, ts):
        keys = jax.random.split(key, ts.reward.shape[0])
        return jax.vmap(lambda k, t: behaviour.init(env, k, None, t))(keys, ts)

    def act(params, key, ts, pstate):
        keys = jax.random.split(key, ts.reward.shape[0])
        actions = jax.vmap(lambda k, p, t: behaviour.act(env, k, p, None, t))(keys, pstate, ts)
        return actions, pstate

    return init, act


def behaviour_rollout(
    env: Env, behaviour: Any, num_episodes: int, key: jax.Array, record: bool = True, workers=2
) -> dict[str, Any]:
    """:func:`host_rollout` of a scripted Behaviour (what ``collect`` runs on host tasks)."""
    init, act = _behaviour_fns(env, behaviour)
    return host_rollout(env, act, (), num_episodes, key, record, workers, init=init)
