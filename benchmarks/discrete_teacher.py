"""How well MAC-Flow's discrete teachers model a discrete dataset, side by side with BC.

For each teacher parametrisation (``--params``: ``velocity``, the paper's MSE flow to one-hots
with a legal argmax; ``posterior``, the categorical teacher trained by cross-entropy), the
teacher stage alone is trained on the dataset minus its last ``--holdout`` share of episodes,
then, on ``--states`` held-out states:

- **NLL** of the data's actions, per agent, with K = 1 and K = ``--flow-steps`` Euler steps:
  ``-log mean_m pi_i(a_i | z_m, s)`` over ``--draws`` joint noise draws z_m, i.e. the probability
  that the agent's sampled action is the data's (its marginal, comparable with BC's per-agent
  NLL). The posterior's ``pi`` is its last-step probabilities, whose Gumbel draw the sampled
  action is, so this is exact up to the Monte-Carlo average over z. The velocity teacher has no
  probabilities: ``pi`` is the histogram of its sampled actions, smoothed by adding 0.5 to the
  count of every legal action (a rough estimate). A joint NLL is not reported: with a sharp K = 10
  teacher its Monte-Carlo estimate is a histogram over joint actions, dominated by the joint
  actions no draw hit.
- the share of raw (unmasked) argmaxes of the flow's end point that are illegal (the posterior's
  end point is its probability vector, 0 on illegal actions, so 0 by construction);
- the share of states where the sampled / zero-noise action equals the data's, and the action
  histogram against the data's;
- the teacher acting centrally in the environment (K Euler steps, sampled and zero noise,
  ``--episodes`` per mode).

Then (``--student-steps`` > 0) the decentralised students are distilled from the frozen teacher
with the Q term off (flow BC: ``q_weight 0``, the teacher cache, soft targets for the posterior),
and their NLL and agreement are measured the same way. BC (``macflow.agents.bc``, each agent on
its own observation, legal softmax) is trained on the same rows with the same width, depth,
batch, learning rate and updates, and measured alongside. Seeds train side by side (vmap); every
figure is the mean over seeds, with the per-seed values in ``--out``.

    python benchmarks/discrete_teacher.py --dataset DATA/smax-3m/medium --seeds 0 1 2 \\
        --out docs/discrete_teacher_3m_medium.json
    python benchmarks/discrete_teacher.py --dataset DATA/smax-3m/medium --params velocity \\
        --width 256 --depth 3 --steps 40000 --student-steps 0
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import tyro
from toy_common import plain, write_json

from macflow import enable_compile_cache
from macflow.agents.base import masked_logits
from macflow.agents.bc import BC, BCConfig
from macflow.agents.macflow import MACFlow
from macflow.data import Dataset, Sampler, load
from macflow.envs import make_env
from macflow.envs.rollout import make_rollout
from macflow.loop import make_chunk, prepare


@dataclasses.dataclass(frozen=True)
class Args:
    dataset: Path
    """A discrete dataset (e.g. made by ``macflow collect smax/3m --quality medium``)."""
    params: tuple[Literal["velocity", "posterior"], ...] = ("velocity", "posterior")
    """Teacher parametrisations to compare."""
    steps: int = 10_000
    """Teacher updates (the table's budget)."""
    student_steps: int = 10_000
    """Student (flow BC) updates after the teacher; BC gets the same number. 0: no students."""
    width: int = 128
    """Hidden width of every network."""
    depth: int = 2
    """Hidden layers of every network."""
    flow_steps: int = 10
    """Euler steps K of the teacher (NLL is also reported at K = 1)."""
    teacher: Literal["joint", "per-agent"] = "joint"
    """Joint field on the state, or the per-agent field on each agent's own observation."""
    teacher_obs: bool = False
    """The joint field also reads every agent's observation."""
    posterior_form: Literal["bayes", "plain"] = "bayes"
    """Posterior teacher's logits (``MACFlowConfig.posterior_form``): ``bayes`` (the default)
    or ``plain``."""
    standardise: bool = False
    """Standardise the state per feature (training rows' mean and std), in training and acting."""
    batch: int = 256
    """Transitions per update."""
    lr: float = 1e-3
    """Adam learning rate of every network."""
    holdout: float = 0.05
    """Share of the dataset's episodes (its last ones) held out for the measurements."""
    states: int = 4096
    """Held-out states on which the models are measured."""
    draws: int = 1024
    """Joint noise draws per held-out state (the NLL's Monte-Carlo average; a sharp K = 10
    teacher needs many: on 256 states of smax/3m, 1024 and 4096 draws differ by 0.0005)."""
    chunk: int = 128
    """Held-out states measured at once (memory: chunk x draws rows)."""
    episodes: int = 320
    """Environment episodes per noise mode (0: skip the environment)."""
    seeds: tuple[int, ...] = (0,)
    """Seeds, trained side by side."""
    out: Path | None = None
    """Write every figure (per seed) as JSON here."""


def split(ds: Dataset, holdout: float) -> tuple[Dataset, Dataset]:
    """The first and the last ``holdout`` share of the episodes, as two datasets."""
    held = max(1, int(round(holdout * ds.num_episodes)))
    keep = ds.num_episodes - held
    cut = int(ds.starts[keep])
    rows = ds.num_transitions

    def part(first: bool) -> Dataset:
        arrays = {}
        for name, x in ds.arrays.items():
            x = np.asarray(x)
            if name.startswith("final_"):
                arrays[name] = x[:keep] if first else x[keep:]
            elif x.shape[:1] == (rows,):
                arrays[name] = x[:cut] if first else x[cut:]
        return dataclasses.replace(ds, arrays=arrays, path=None, checksum=None)

    return part(True), part(False)


def _stack(agents, i):
    return jax.tree.map(lambda x: x[i], agents)


def _mean(values) -> float:
    return float(np.mean(values))


class Measure:
    """Held-out rows and the figures computed on them, ``--chunk`` states at a time."""

    def __init__(self, sampler: Sampler, a: Args):
        n = min(a.states, sampler.num_transitions)
        n -= n % min(a.chunk, n)
        self.batch = sampler.gather(jnp.arange(n) * (sampler.num_transitions // n))
        self.a = a
        self.data = np.asarray(self.batch.actions)
        self.dim = self.batch.legal_actions.shape[-1]
        self.hist = np.bincount(self.data.ravel(), minlength=self.dim) / self.data.size

    def chunks(self):
        """``(start, rows)``: each chunk's held-out rows, every one repeated ``draws`` times."""
        c = min(self.a.chunk, self.data.shape[0])
        for start in range(0, self.data.shape[0], c):
            part = jax.tree.map(lambda x, i=start: x[i : i + c], self.batch)
            yield start, jax.tree.map(lambda x: jnp.repeat(x, self.a.draws, axis=0), part)

    def agreement(self, acts: np.ndarray) -> tuple[float, list[float]]:
        hist = np.bincount(acts.ravel(), minlength=self.dim) / acts.size
        return float(np.mean(acts == self.data)), np.round(hist, 4).tolist()

    def figures(self, p_data: np.ndarray, sampled: np.ndarray, zero: np.ndarray) -> dict:
        """``p_data [R, N]``: each model's probability of the data's action; one sampled and the
        zero-noise action ``[R, N]``."""
        out = {"nll": float(-np.log(np.maximum(p_data, 1e-12)).mean())}
        out["p_sample"], out["hist_sample"] = self.agreement(sampled)
        out["p_zero"], out["hist_zero"] = self.agreement(zero)
        return out


@functools.partial(jax.jit, static_argnames=("draws",))
def _teacher_chunk(agent: MACFlow, b, key, draws: int):
    """A chunk's ``p(data action)`` ``[R, N]``, one sampled action ``[R, N]`` and the number of
    illegal raw argmaxes of the flow's end point."""
    shape = b.actions.shape + (b.legal_actions.shape[-1],)
    noise = jax.random.normal(key, shape)
    gumbel = jax.random.gumbel(jax.random.fold_in(key, 1), shape)
    end = agent.teacher_flow(
        agent.params["teacher"], noise, b.states, b.observations, b.legal_actions
    )
    acts = agent._decode(end, b.legal_actions, gumbel)
    rows = -1
    if agent._posterior:  # the draw's exact probability, averaged over the joint noise
        p = jnp.take_along_axis(end, b.actions[..., None], -1)[..., 0]
        p_data = p.reshape(rows, draws, p.shape[-1]).mean(axis=1)
    else:  # no probabilities: the draws' histogram, 0.5 added to every legal action's count
        hits = (acts == b.actions).reshape(rows, draws, acts.shape[-1]).sum(axis=1)
        legal = b.legal_actions.reshape(rows, draws, *b.legal_actions.shape[1:])[:, 0]
        p_data = (hits + 0.5) / (draws + 0.5 * legal.sum(-1))
    raw = jnp.argmax(end, axis=-1)
    illegal = (~jnp.take_along_axis(b.legal_actions, raw[..., None], -1)).sum()
    first = acts.reshape(rows, draws, acts.shape[-1])[:, 0]
    return p_data, first, illegal


def teacher_figures(agent: MACFlow, m: Measure, k: int, key) -> dict:
    ag = agent.replace(config=dataclasses.replace(agent.config, flow_steps=k))
    p_data, first, illegal = [], [], 0
    for start, b in m.chunks():
        p, f, bad = jax.device_get(_teacher_chunk(ag, b, jax.random.fold_in(key, start), m.a.draws))
        p_data.append(p), first.append(f)
        illegal += int(bad)
    b = m.batch
    zero = ag.act_teacher(key, b.observations, b.states, b.legal_actions, "zero")
    out = m.figures(np.concatenate(p_data), np.concatenate(first), np.asarray(zero))
    out["illegal_raw_argmax"] = illegal / (m.data.size * m.a.draws)
    return out


@functools.partial(jax.jit, static_argnames=("draws",))
def _student_chunk(agent: MACFlow, b, key, draws: int):
    noise = jax.random.normal(key, b.actions.shape + (b.legal_actions.shape[-1],))
    logits = agent._student_out(agent.params["student"], b.observations, noise)
    probs = jax.nn.softmax(masked_logits(logits, b.legal_actions))
    p = jnp.take_along_axis(probs, b.actions[..., None], -1)[..., 0]
    return p.reshape(-1, draws, p.shape[-1]).mean(axis=1)


def student_figures(agent: MACFlow, m: Measure, key) -> dict:
    p_data = [
        jax.device_get(_student_chunk(agent, b, jax.random.fold_in(key, start), m.a.draws))
        for start, b in m.chunks()
    ]
    b = m.batch
    sampled = agent.act(key, b.observations, b.legal_actions, "sample")
    zero = agent.act(key, b.observations, b.legal_actions, "zero")
    return m.figures(np.concatenate(p_data), np.asarray(sampled), np.asarray(zero))


def bc_figures(agent: BC, m: Measure, key) -> dict:
    b = m.batch
    logits = masked_logits(agent._forward(agent.params["policy"], b.observations), b.legal_actions)
    p_data = jnp.take_along_axis(jax.nn.softmax(logits), b.actions[..., None], -1)[..., 0]
    sampled = agent.act(key, b.observations, b.legal_actions, "sample")
    zero = agent.act(key, b.observations, b.legal_actions, "zero")
    return m.figures(np.asarray(p_data), np.asarray(sampled), np.asarray(zero))


def environment(env, agent, act, episodes: int) -> dict:
    run = make_rollout(env, lambda *_: (), act, episodes, record=False)
    out = jax.device_get(run(jax.random.PRNGKey(3), agent))
    res = {"return": float(np.mean(out["returns"]))}
    if "won" in out["final_info"]:
        res["win"] = float(np.mean(out["final_info"]["won"]))
    return res


def main(a: Args) -> None:
    enable_compile_cache()
    ds = load(a.dataset, verify=False)
    spec = ds.spec
    if not spec.discrete:
        raise SystemExit(f"{a.dataset}: {spec.env_id} has continuous actions; this is for discrete")
    train_ds, test_ds = split(ds, a.holdout)
    states = np.asarray(train_ds.arrays["states"])
    mu, sd = states.mean(0), np.where(states.std(0) < 1e-6, 1.0, states.std(0))
    if a.standardise:
        for part in (train_ds, test_ds):
            for key in ("states", "final_states"):
                part.arrays[key] = ((np.asarray(part.arrays[key]) - mu) / sd).astype(np.float32)
    sampler = Sampler.from_dataset(train_ds)
    m = Measure(Sampler.from_dataset(test_ds), a)
    hidden = (a.width,) * a.depth
    keys = jnp.stack([jax.random.PRNGKey(s) for s in a.seeds])
    chunk = make_chunk(a.batch)
    env = make_env(spec.env_id, **ds.env_kwargs) if a.episodes else None
    mu_j, sd_j = jnp.asarray(mu), jnp.asarray(sd)
    k_eval = jax.random.PRNGKey(11)
    print(
        f"{spec.env_id} {ds.quality}: {train_ds.num_episodes} training / {test_ds.num_episodes} "
        f"held-out episodes; {m.data.shape[0]} held-out states; {a.depth}x{a.width}, "
        f"{a.steps} teacher + {a.student_steps} student updates, batch {a.batch}, lr {a.lr}, "
        f"seeds {list(a.seeds)}; data return {ds.stats()['return_mean']:.3f}"
    )
    print(f"  data action histogram {np.round(m.hist, 3).tolist()}")

    def train(agent_cls, config, stage, steps, agents=None, aux=None):
        if agents is None:
            agents = jax.jit(jax.vmap(lambda k: agent_cls.create(k, spec, config)))(keys)
        done = 0
        while done < steps:
            k = min(1000, steps - done)
            agents, _, _ = chunk(agents, aux, sampler, keys, done, stage, k)
            done += k
        return agents

    results: dict = {"args": plain(a), "data_return": ds.stats()["return_mean"], "models": {}}
    models = results["models"]
    for param in a.params:
        config = dataclasses.replace(
            MACFlow.presets["paper"](spec), teacher=a.teacher, teacher_obs=a.teacher_obs,
            teacher_param=param, posterior_form=a.posterior_form, teacher_hidden=hidden,
            student_hidden=hidden, lr=a.lr, teacher_steps=a.steps, flow_steps=a.flow_steps,
            q_weight=0.0,
        )  # fmt: skip
        agents = train(MACFlow, config, "teacher", a.steps)
        rows = {f"teacher K=1 ({param})": [], f"teacher K={a.flow_steps} ({param})": []}
        for i in range(len(a.seeds)):
            agent = _stack(agents, i)
            rows[f"teacher K=1 ({param})"].append(teacher_figures(agent, m, 1, k_eval))
            fig = teacher_figures(agent, m, a.flow_steps, k_eval)
            if env is not None:
                for mode in ("sample", "zero"):

                    def act(ag, key, ps, es, ts, mode=mode):
                        state = (ts.state - mu_j) / sd_j if a.standardise else ts.state
                        acts = ag.act_teacher(
                            key, ts.observations[None], state[None], ts.legal_actions[None], mode
                        )
                        return acts[0], ps

                    fig[f"env_{mode}"] = environment(env, agent, act, a.episodes)
            rows[f"teacher K={a.flow_steps} ({param})"].append(fig)
        models |= rows
        if a.student_steps:
            aux = jax.block_until_ready(prepare(agents, sampler, "policy"))
            per_seed = aux["targets"].nbytes / len(a.seeds)
            results.setdefault("cache", {})[param] = {
                "rows": sampler.num_transitions,
                "bytes_per_seed": per_seed,
                "dtype": str(aux["targets"].dtype),
                "mb_per_million_rows": per_seed / sampler.num_transitions,
            }
            print(
                f"  teacher cache ({param}): {aux['targets'].dtype} {aux['targets'].shape[1:]}, "
                f"{per_seed / 2**20:.0f} MiB per seed ({per_seed / sampler.num_transitions:.0f} "
                "bytes per row)",
                flush=True,
            )
            agents = train(MACFlow, config, "policy", a.student_steps, agents, aux)
            models[f"students ({param})"] = [
                student_figures(_stack(agents, i), m, k_eval) for i in range(len(a.seeds))
            ]
        print_table(models, m)
    if a.student_steps:
        bc_cfg = BCConfig(hidden=hidden, lr=a.lr)
        agents = train(BC, bc_cfg, "bc", a.student_steps)
        figs = []
        for i in range(len(a.seeds)):
            agent = _stack(agents, i)
            fig = bc_figures(agent, m, k_eval)
            if env is not None:
                for mode in ("sample", "zero"):

                    def act(ag, key, ps, es, ts, mode=mode):
                        return ag.act(key, ts.observations, ts.legal_actions, mode), ps

                    fig[f"env_{mode}"] = environment(env, agent, act, a.episodes)
            figs.append(fig)
        models["BC (own observation)"] = figs
    print_table(models, m)
    if a.out:
        write_json(a.out, results)


def print_table(models: dict, m: Measure) -> None:
    head = (
        "| model | NLL / agent | P(sampled = data) | P(zero = data) | "
        "illegal raw argmax | return sampled (win) | return zero (win) |"
    )
    print("\n" + head + "\n" + "|---" * 7 + "|")

    def cell(rows, key, fmt="{:.3f}"):
        if key not in rows[0]:
            return "-"
        return fmt.format(_mean([r[key] for r in rows]))

    def env_cell(rows, mode):
        if f"env_{mode}" not in rows[0]:
            return "-"
        ret = _mean([r[f"env_{mode}"]["return"] for r in rows])
        if "win" not in rows[0][f"env_{mode}"]:
            return f"{ret:.3f}"
        return f"{ret:.3f} ({100 * _mean([r[f'env_{mode}']['win'] for r in rows]):.1f}%)"

    for name, rows in models.items():
        keys = ("nll", "p_sample", "p_zero", "illegal_raw_argmax")
        cells = [cell(rows, k) for k in keys] + [env_cell(rows, "sample"), env_cell(rows, "zero")]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nsampled-action histograms (seed 0):")
    print(f"  {'data':28} {np.round(m.hist, 3).tolist()}")
    for name, rows in models.items():
        print(f"  {name:28} {np.round(rows[0]['hist_sample'], 3).tolist()}")
    print(flush=True)


if __name__ == "__main__":
    main(tyro.cli(Args))
