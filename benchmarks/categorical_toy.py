"""A state-conditioned categorical toy with a known answer: how exactly each discrete teacher
samples the data's action distribution.

N agents (3), A actions (9), a Gaussian state ``s ~ N(0, I_S)`` (S = 48). Agent i's action is
drawn from ``softmax(masked(scale * W_i s / sqrt(S)))`` with ``W_i`` standard normal, under a
random legal mask (action 0 always legal, every other one legal with probability 0.55, so about
60% of the actions are legal). Agents are independent given the state, so the true
distribution of every agent is known in closed form on any state.

Trained on the same ``--samples`` rows with the same networks (``--width`` x ``--depth``),
batch, learning rate and updates:

- ``velocity``: MAC-Flow's paper teacher (MSE velocity to one-hots, K Euler steps, legal argmax);
- ``posterior``: the categorical teacher (cross-entropy posterior on the same path, K - 1 Euler
  steps of its implied velocity, Gumbel draw from the last step's probabilities), in its default
  ``bayes`` form and its ``plain`` form (``MACFlowConfig.posterior_form``);
- ``bc``: state-conditioned categorical BC (an MLP on the state and the masks, masked softmax).

Reported on ``--states`` held-out states, per agent and averaged: the total-variation distance
between the model's sampled action distribution and the true one, (a) from probabilities (BC's
softmax; the posterior's last-step probabilities averaged over ``--draws`` noise draws, which is
exactly the distribution of its Gumbel draw given those draws; the velocity teacher has none) and
(b) from ``--samples-per-state`` sampled actions for every model (the same estimator, with its
small upward bias, for all three); and the share of the velocity teacher's raw (unmasked)
argmaxes that are illegal.

    python benchmarks/categorical_toy.py                         # ~3 min on 2 CPU cores
    python benchmarks/categorical_toy.py --seeds 0 1 2 --out docs/figures/categorical_toy.json
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tyro
from toy_common import plain, write_json

from macflow import enable_compile_cache
from macflow.agents.base import adam_step, masked_logits
from macflow.agents.macflow import MACFlow, MACFlowConfig
from macflow.data import Dataset, Sampler
from macflow.loop import make_chunk
from macflow.nn import MLP, pick
from macflow.spec import EnvSpec


@dataclasses.dataclass(frozen=True)
class Args:
    agents: int = 3
    """N."""
    actions: int = 9
    """A."""
    state_dim: int = 48
    """S."""
    scale: float = 2.0
    """Logit scale: the true logits have standard deviation ``scale`` over states."""
    legal_p: float = 0.55
    """Probability that each action but action 0 (always legal) is legal."""
    samples: int = 20_000
    """Training rows."""
    width: int = 128
    """Hidden width of every network."""
    depth: int = 2
    """Hidden layers of every network."""
    updates: int = 6000
    """Adam updates of every model."""
    batch: int = 256
    """Rows per update."""
    lr: float = 1e-3
    """Adam learning rate."""
    flow_steps: int = 10
    """Euler steps K of both teachers."""
    states: int = 1000
    """Held-out states."""
    draws: int = 64
    """Noise draws per held-out state for the posterior's probabilities."""
    samples_per_state: int = 1000
    """Sampled actions per held-out state and model."""
    seeds: tuple[int, ...] = (0,)
    """Seeds (each draws its own toy, data and networks)."""
    out: Path | None = None
    """Write the results as JSON here."""


def _toy(a: Args, key, rows: int):
    """States, legal masks, true probabilities ``[R, N, A]`` and sampled actions of one toy."""
    k_w, k_s, k_m, k_a = jax.random.split(key, 4)
    w = jax.random.normal(jax.random.fold_in(k_w, 0), (a.agents, a.state_dim, a.actions))
    s = jax.random.normal(k_s, (rows, a.state_dim))
    legal = jax.random.bernoulli(k_m, a.legal_p, (rows, a.agents, a.actions))
    legal = legal.at[..., 0].set(True)
    logits = a.scale * jnp.einsum("rs,nsa->rna", s, w) / np.sqrt(a.state_dim)
    probs = jax.nn.softmax(masked_logits(logits, legal))
    actions = jax.random.categorical(k_a, masked_logits(logits, legal))
    return s, legal, probs, actions


def _dataset(a: Args, s, legal, actions) -> Dataset:
    rows = s.shape[0]
    spec = EnvSpec("toy/categorical", a.agents, 1, a.state_dim, a.actions, True, 1)
    obs = np.zeros((rows, a.agents, 1), np.float32)
    arrays = {
        "observations": obs,
        "states": np.asarray(s, np.float32),
        "actions": np.asarray(actions, np.int32),
        "legal_actions": np.asarray(legal),
        "rewards": np.zeros(rows, np.float32),
        "terminals": np.ones(rows, bool),
        "truncations": np.zeros(rows, bool),
        "final_observations": obs,
        "final_states": np.asarray(s, np.float32),
        "final_legal_actions": np.asarray(legal),
    }
    return Dataset(arrays=arrays, spec=spec, provenance={"method": "benchmark"})


TEACHERS = {
    "velocity": {"teacher_param": "velocity"},
    "posterior (plain)": {"teacher_param": "posterior", "posterior_form": "plain"},
    "posterior": {"teacher_param": "posterior", "posterior_form": "bayes"},
}


def _teacher(a: Args, ds: Dataset, name: str, seed: int) -> MACFlow:
    hidden = (a.width,) * a.depth
    config = MACFlowConfig(
        **TEACHERS[name], teacher_hidden=hidden, student_hidden=(8,), critic_hidden=(8,),
        flow_steps=a.flow_steps, lr=a.lr, teacher_steps=a.updates, q_weight=0.0,
    )  # fmt: skip
    keys = jnp.stack([jax.random.PRNGKey(seed)])
    agents = jax.vmap(lambda k: MACFlow.create(k, ds.spec, config))(keys)
    agents, _, _ = make_chunk(a.batch)(
        agents, None, Sampler.from_dataset(ds), keys, 0, "teacher", a.updates
    )
    return jax.tree.map(lambda x: x[0], agents)


def _bc(a: Args, s, legal, actions, seed: int):
    """State-conditioned categorical BC; returns ``(s, legal) -> probabilities [R, N, A]``."""
    net = MLP((a.width,) * a.depth, a.agents * a.actions)

    def logits(params, s, legal):
        x = jnp.concatenate([s, legal.reshape(s.shape[0], -1).astype(s.dtype)], axis=-1)
        return masked_logits(net.apply(params, x).reshape(legal.shape), legal)

    def loss(params, idx):
        lp = jax.nn.log_softmax(logits(params, s[idx], legal[idx]))
        return -pick(lp, actions[idx]).mean()

    def step(carry, i):
        params, opt = carry
        idx = jax.random.randint(jax.random.fold_in(key, i), (a.batch,), 0, s.shape[0])
        params, opt = adam_step(a.lr, params, jax.grad(loss)(params, idx), opt)
        return (params, opt), None

    key = jax.random.PRNGKey(seed)
    params = net.init(key, jnp.zeros((1, a.state_dim + a.agents * a.actions)))
    (params, _), _ = jax.jit(
        lambda c: jax.lax.scan(step, c, jnp.arange(a.updates)), donate_argnums=0
    )((params, optax.adam(a.lr).init(params)))
    return jax.jit(lambda s, legal: jax.nn.softmax(logits(params, s, legal)))


def _tv(p, q) -> float:
    """Mean over states and agents of ``0.5 * || p - q ||_1``."""
    return float(0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum(-1).mean())


def _histogram(acts, actions: int) -> np.ndarray:
    """``[R, M, N]`` sampled indices -> ``[R, N, A]`` empirical distributions."""
    return np.asarray(jax.nn.one_hot(acts, actions).mean(axis=1))


def run_seed(a: Args, seed: int) -> dict:
    key = jax.random.PRNGKey(seed)
    toy = jax.random.fold_in(key, 1)  # the same W for training and held-out states
    s, legal, _, actions = _toy(a, toy, a.samples)
    s_te, legal_te, p_te, _ = _toy(a, toy, a.samples + a.states)
    s_te, legal_te, p_te = s_te[a.samples :], legal_te[a.samples :], p_te[a.samples :]
    ds = _dataset(a, s, legal, actions)
    r, n, m = a.states, a.agents, a.samples_per_state
    rep = lambda x, k: jnp.repeat(x, k, axis=0)  # noqa: E731
    obs = jnp.zeros((r * m, n, 1))
    out: dict = {"seed": seed}

    bc = _bc(a, s, legal, actions, seed)
    q = bc(s_te, legal_te)
    draws = jax.random.categorical(jax.random.PRNGKey(5), jnp.log(rep(q, m)))
    out["bc"] = {
        "tv": _tv(q, p_te),
        "tv_sampled": _tv(_histogram(draws.reshape(r, m, n), a.actions), p_te),
    }

    for name in TEACHERS:
        agent = _teacher(a, ds, name, seed)
        acts = agent.act_teacher(
            jax.random.PRNGKey(6), obs, rep(s_te, m), rep(legal_te, m), "sample"
        ).reshape(r, m, n)
        res = {"tv_sampled": _tv(_histogram(acts, a.actions), p_te)}
        noise = jax.random.normal(jax.random.PRNGKey(7), (r * m, n, a.actions))
        end = agent.teacher_flow(
            agent.params["teacher"], noise, rep(s_te, m), obs, rep(legal_te, m)
        )
        if agent._posterior:
            d = min(a.draws, m)
            res["tv"] = _tv(np.asarray(end).reshape(r, m, n, -1)[:, :d].mean(axis=1), p_te)
        raw = jnp.argmax(end, axis=-1)  # the flow's end point, no mask
        res["illegal_raw_argmax"] = float(
            1 - np.asarray(jnp.take_along_axis(rep(legal_te, m), raw[..., None], -1)).mean()
        )
        out[name] = res
    return out


def main(a: Args) -> None:
    enable_compile_cache()
    results = [run_seed(a, seed) for seed in a.seeds]
    print(
        f"{a.agents} agents, {a.actions} actions, state {a.state_dim}, {a.samples} samples, "
        f"{a.depth}x{a.width}, {a.updates} updates, K={a.flow_steps}; per-agent TV to the true "
        f"distribution on {a.states} held-out states (mean over seeds {list(a.seeds)})"
    )
    print("| model | TV (probabilities) | TV (sampled) | illegal raw argmax |\n|---|---|---|---|")
    for model in ("velocity", "bc", *list(TEACHERS)[1:]):
        rows = [r[model] for r in results]
        cells = [
            f"{np.mean([x[k] for x in rows]):.3f}" if k in rows[0] else "-"
            for k in ("tv", "tv_sampled", "illegal_raw_argmax")
        ]
        print(f"| {model} | {' | '.join(cells)} |")
    if a.out:
        write_json(a.out, {"args": plain(a), "results": results})


if __name__ == "__main__":
    main(tyro.cli(Args))
