"""The training loop, shared by every algorithm.

The dataset goes to the device once. Each host call runs K updates (``log_every``) of every seed
inside one jitted ``lax.scan``, the seeds ``vmap``ped side by side; the host then logs the
averaged metrics, checks them for NaN/inf, evaluates the decentralised policy and writes an
atomic checkpoint when due. Every evaluation row carries ``train_seconds``: the wall clock spent
so far on updates and stage preparation (compilation included; evaluations and checkpoints
excluded), counted from the start of this process's training (it restarts at 0 on ``--resume``).
Batches are drawn with keys derived from (seed, update number) and the agents carry their own
RNG, so a resumed run repeats exactly what an uninterrupted one computes.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from macflow import __version__, cache_root
from macflow.agents import ACT_MODES, get_agent
from macflow.data import Sampler, load
from macflow.data.imports import cached_import
from macflow.envs import entry, make_env
from macflow.envs.base import EnvSpec
from macflow.evaluate import evaluate
from macflow.progress import progress_bar
from macflow.runs import CHECKPOINT, RunLog, load_checkpoint, save_checkpoint, write_atomic


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Options of ``macflow train`` that do not belong to the algorithm."""

    dataset: Path | None = None
    """Dataset directory, or a dataset of the field's formats (an OG-MARL vault uid, OMAR,
    OMIGA, CFCQL or MADiff files), converted once into the cache (``~/.cache/macflow/imports``).
    Without it, ``--task``'s default scripted dataset is collected into the cache on first use."""
    task: str | None = None
    """Environment to evaluate in; defaults to the dataset's own (they must agree)."""
    algo: str = "macflow"
    """Algorithm (see ``macflow.agents.AGENTS``)."""
    preset: str = "paper"
    """The algorithm's preset whose values the ``--agent.*`` options default to."""
    steps: int = 100_000
    """Updates of the final (policy) stage; earlier stages (e.g. the teacher's) add their own."""
    batch_size: int = 256
    """Transitions per update and seed."""
    seeds: tuple[int, ...] = (0,)
    """Seeds trained side by side in one program (``vmap``), e.g. ``--seeds 0 1 2 3``."""
    log_every: int = 1000
    """K: updates per jitted call; metrics are averaged over them."""
    eval_every: int = 10_000
    """Evaluate the decentralised policy every this many updates of an evaluating stage
    (a multiple of ``log_every``; 0 disables periodic evaluation)."""
    eval_episodes: int = 32
    """Episodes per periodic evaluation, per seed and noise mode."""
    final_eval_factor: int = 10
    """The final evaluation uses this many times ``eval_episodes``."""
    checkpoint_every: int = 10_000
    """Write a checkpoint every this many updates (a multiple of ``log_every``)."""
    out: Path = Path("runs")
    """Parent directory of run directories."""
    name: str | None = None
    """Run directory name (default: ``<task>-<algo>-<time>``)."""
    resume: bool = False
    """Continue the run in ``out/name`` from its checkpoint (``steps`` may be raised)."""
    tensorboard: bool = False
    """Also write TensorBoard event files (needs the ``tensorboard`` extra)."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every", "eval_episodes", "final_eval_factor"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        for name in ("eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if value < 0 or value % self.log_every:
                raise ValueError(
                    f"--{name.replace('_', '-')} ({value}) must be a multiple of --log-every "
                    f"({self.log_every})"
                )
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds must be distinct and non-empty, got {self.seeds}")


class TrainingDiverged(RuntimeError):
    """A loss became NaN or inf; the last good checkpoint is kept."""


def default_dataset(task: str, episodes: int = 10_000) -> Path:
    """``task``'s default scripted dataset in the cache, collected on first use."""
    from macflow.data import save
    from macflow.data.collect import collect

    path = cache_root() / "datasets" / task.replace("/", "-") / "scripted"
    if not (path / "meta.json").exists():
        e = entry(task)
        behaviour = e.behaviour_cls()
        if behaviour is None:
            raise ValueError(f"{task} has no scripted data generator; pass --dataset")
        print(f"collecting the default dataset of {task} into {path}", file=sys.stderr)
        save(collect(e.env_cls()(), behaviour(), episodes), path)
    return path


def resolve_dataset(dataset: str | Path | None, task: str | None) -> Path:
    """The dataset directory a run trains on: ``dataset`` (a macflow dataset, or one of the
    field's formats converted once into the cache), else ``task``'s default scripted dataset."""
    if dataset is None and task is None:
        raise ValueError("give --dataset DIR or --task ID (its default dataset is collected)")
    return cached_import(dataset) if dataset else default_dataset(task)


def dataset_spec(dataset: str | Path | None, task: str | None) -> EnvSpec | None:
    """The spec a run of ``dataset``/``task`` will train on, without collecting anything (the
    presets are resolved for it before training); None when neither is given."""
    if dataset:
        from macflow.data import read_meta

        return read_meta(resolve_dataset(dataset, task))["spec"]
    if task:
        return entry(task).env_cls()().spec
    return None


def hardware() -> dict[str, Any]:
    """What a run ran on, for the tables that report where each figure was measured."""
    import os
    import platform

    device = jax.devices()[0]
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    return {
        "device": f"{device.platform}:{device.device_kind}",
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "jax": jax.__version__,
    }


PROBE_FROM = 5000
"""Runs with at least this many updates left print a time estimate before training."""


def _widths(config: Any) -> str:
    """``teacher 4x512, critic 4x512``: the layer widths of an agent config."""
    parts = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name.endswith("hidden") and isinstance(value, tuple) and value:
            name = f.name.removesuffix("hidden").rstrip("_") or "net"
            wide = f"{len(value)}x{value[0]}" if len(set(value)) == 1 else "-".join(map(str, value))
            parts.append(f"{name} {wide}")
    return ", ".join(parts)


def plan_text(cfg: TrainConfig, spec: Any, agent_config: Any, stages: list, seeds: list) -> str:
    """One line saying what this run will do, printed before the first update."""
    updates = " + ".join(f"{s.name} {s.steps:,}" for s in stages)
    return (
        f"plan: {cfg.algo} ({cfg.preset}) on {spec.env_id}, {len(seeds)} seed(s), {updates} "
        f"updates of batch {cfg.batch_size}, networks {_widths(agent_config) or '-'}"
    )


def estimate_text(per_update: float, left_in_stage: int, later: int, stage_end: int) -> str:
    """The time this run needs, from a timed probe of the current stage; later stages counted
    at the same rate, so the total is a lower bound when they cost more per update (e.g. a flow's
    policy stage, which also prepares the teacher's targets)."""
    device = jax.devices()[0]
    here = f"{device.platform}" + (f" {device.device_kind}" if device.platform != "cpu" else "")
    total = per_update * (left_in_stage + later)
    text = (
        f"estimate: {1 / per_update:,.0f} updates/s on this {here}; about "
        f"{_duration(per_update * left_in_stage)} to update {stage_end:,}"
    )
    if later:
        text += f", at least {_duration(total)} in all"
    if total > 30 * 60:
        text += (
            " (over 30 minutes: `--preset small` trains 2x128 networks with 10k teacher updates, "
            "the results table's budget, with `--steps 10000`)"
        )
    return text


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _make_chunk(sampler_batch: int):
    """The jitted K-update program ``(agents, aux, sampler, keys, start) -> (agents, mean,
    finite)``; ``aux`` is each seed's stage precomputation (or None)."""

    def chunk(agents, aux, sampler, keys, start, stage, k):
        def body(agents, i):
            step_keys = jax.vmap(lambda key: jax.random.fold_in(key, start + i))(keys)
            batch = jax.vmap(lambda key: sampler.sample(key, sampler_batch))(step_keys)
            return jax.vmap(lambda a, x, b: a.update(b, stage, x))(agents, aux, batch)

        agents, infos = jax.lax.scan(body, agents, jnp.arange(k))
        means = jax.tree.map(lambda x: x.mean(axis=0), infos)
        finite = jax.tree.map(lambda x: jnp.isfinite(x).all(axis=0), infos)
        return agents, means, finite

    return jax.jit(chunk, static_argnames=("stage", "k"))


@functools.partial(jax.jit, static_argnames=("stage",))
def _prepare(agents, sampler, stage: str):
    return jax.vmap(lambda a: a.prepare(sampler, stage))(agents)


@dataclasses.dataclass
class Run:
    """What ``train`` returns: where it wrote and the final evaluation."""

    path: Path
    final: dict[str, Any] | None


def train(
    cfg: TrainConfig, agent_config: Any = None, console=None, command: str | None = None
) -> Run:
    """Train ``cfg.algo`` with ``agent_config`` (default: its ``cfg.preset`` for the dataset's
    task); see the module docstring. ``console``: a ``rich`` console for the progress bar;
    ``command``: the command line recorded in ``config.json`` (``macflow train`` passes its own).
    """
    dataset_path = resolve_dataset(cfg.dataset, cfg.task)
    ds = load(dataset_path)
    spec = ds.spec
    if cfg.task is not None and cfg.task != spec.env_id:
        raise ValueError(f"--task {cfg.task} does not match the dataset's task {spec.env_id}")
    try:
        env = make_env(spec.env_id, **ds.env_kwargs)
    except KeyError:
        env = None  # an imported dataset of a task macflow cannot run: train without evaluation
    agent_cls = get_agent(cfg.algo)
    if agent_config is None:
        if cfg.preset not in agent_cls.presets:
            raise ValueError(
                f"{cfg.algo} has presets {sorted(agent_cls.presets)}, not {cfg.preset}"
            )
        agent_config = agent_cls.presets[cfg.preset](spec)
    stages = agent_cls.stages(agent_config, cfg.steps)
    seeds = list(cfg.seeds)

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = cfg.name or f"{spec.env_id.replace('/', '-')}-{cfg.algo}-{stamp}"
    run = Path(cfg.out) / name
    record = {
        "macflow_version": __version__,
        "command": command,
        "algo": cfg.algo,
        "train": _jsonable(cfg) | {"dataset": str(Path(dataset_path).absolute())},
        "agent": _jsonable(agent_config),
        "dataset": {
            "checksum": ds.checksum,
            "env_id": spec.env_id,
            "quality": ds.quality,
            "stats": ds.stats(),
            "env_kwargs": dict(ds.env_kwargs),
        },
        "spec": spec.to_dict(),
        "stages": [s._asdict() for s in stages],
    }
    keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    agents = jax.jit(jax.vmap(lambda k: agent_cls.create(k, spec, agent_config)))(keys)
    data_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0x5EED))(keys)
    step = 0
    if cfg.resume:
        if not (run / CHECKPOINT).exists():
            raise ValueError(f"--resume: no checkpoint at {run / CHECKPOINT}")
        old = json.loads((run / "config.json").read_text())
        for key in ("algo", "agent", "dataset", "spec"):
            if old[key] != json.loads(json.dumps(record[key])):
                raise ValueError(f"--resume: the run's {key} differs from this command's")
        for key in ("seeds", "batch_size", "log_every"):
            if old["train"][key] != record["train"][key]:
                raise ValueError(
                    f"--resume: --{key.replace('_', '-')} must stay {old['train'][key]}"
                )
        agents, step = load_checkpoint(run, agents)
    elif run.exists():
        raise ValueError(f"{run} exists; pass --resume to continue it or choose another --name")
    run.mkdir(parents=True, exist_ok=True)
    write_atomic(run / "config.json", json.dumps(record, indent=2))

    sampler = Sampler.from_dataset(ds)
    chunk = _make_chunk(cfg.batch_size)
    example = sampler.sample(jax.random.PRNGKey(0), 2)
    abstract = jax.eval_shape(lambda k: agent_cls.create(k, spec, agent_config), keys[0])
    columns: list[str] = []
    for stage in stages:
        info = jax.eval_shape(lambda a, b, s=stage.name: a.update(b, s)[1], abstract, example)
        columns += [k for k in info if k not in columns]
    log = RunLog(run, columns, cfg.tensorboard)
    if cfg.resume:
        log.truncate_after(step)
    else:
        save_checkpoint(run, agents, 0)
    last_good = step

    total = sum(s.steps for s in stages)
    say = console.print if console is not None else print
    say(plan_text(cfg, spec, agent_config, stages, seeds))
    first = next(
        (i for i, s in enumerate(stages) if step < sum(t.steps for t in stages[: i + 1])), 0
    )
    if total - step >= PROBE_FROM and not stages[first].prepare:
        # Time a few updates of the current stage on a throw-away copy (after compiling them),
        # so the estimate comes within seconds rather than after a whole logged chunk.
        k = min(cfg.log_every, 50)
        probe = functools.partial(
            chunk, agents, None, sampler, data_keys, step, stages[first].name, k
        )
        jax.block_until_ready(probe())
        t0 = time.perf_counter()
        jax.block_until_ready(probe())
        stage_end = sum(t.steps for t in stages[: first + 1])
        per = (time.perf_counter() - t0) / k
        say(estimate_text(per, stage_end - step, total - stage_end, stage_end))
    bar = progress_bar("rate", "eval", console=console, disable=not cfg.progress)
    eval_key = jax.random.PRNGKey(0xE7A1)
    reference = ds.reference_returns
    latest_eval = ""
    train_seconds = 0.0
    with bar:
        task = bar.add_task(name, total=total, completed=step, rate="", eval="")
        offset = 0
        for stage in stages:
            end = offset + stage.steps
            aux = None
            if stage.prepare and step < end:
                bar.update(task, rate=f"preparing {stage.name}")
                t0 = time.perf_counter()
                aux = jax.block_until_ready(_prepare(agents, sampler, stage.name))
                train_seconds += time.perf_counter() - t0
            while step < end:
                k = min(cfg.log_every, end - step)
                t0 = time.perf_counter()
                agents, means, finite = chunk(agents, aux, sampler, data_keys, step, stage.name, k)
                means, finite = jax.device_get((means, finite))
                dt = time.perf_counter() - t0
                train_seconds += dt
                for metric, ok in finite.items():
                    bad = np.flatnonzero(~np.asarray(ok))
                    if bad.size:
                        raise TrainingDiverged(
                            f"loss '{metric}' became NaN/inf for seed {seeds[bad[0]]} between "
                            f"updates {step} and {step + k} (stage {stage.name}); stopped. The "
                            f"last good checkpoint is {run / CHECKPOINT} (update {last_good}); "
                            "lower the learning rate or check the data's scale."
                        )
                step += k
                per_seed = [{m: float(v[i]) for m, v in means.items()} for i in range(len(seeds))]
                log.train(step, stage.name, per_seed, seeds)
                due = cfg.eval_every and (step - offset) % cfg.eval_every == 0
                if env is not None and stage.evaluate and due:
                    for mode in ACT_MODES:
                        key = jax.random.fold_in(eval_key, step)
                        res = evaluate(env, agents, key, cfg.eval_episodes, mode, reference)
                        timed = [r | {"train_seconds": round(train_seconds, 3)} for r in res]
                        log.evaluation(step, mode, timed, seeds)
                        if mode == "sample":
                            log.marl_eval(spec.env_id, cfg.algo, step, res, seeds)
                            latest_eval = f"return {np.mean([r['return_mean'] for r in res]):.4g}"
                if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == end:
                    save_checkpoint(run, agents, step)
                    last_good = step
                bar.update(task, completed=step, rate=f"{k / dt:,.0f} upd/s", eval=latest_eval)
            offset = end

    final = None
    if env is not None and stages[-1].evaluate:
        episodes = cfg.eval_episodes * cfg.final_eval_factor
        final = {"step": step, "episodes": episodes, "seeds": seeds, "modes": {}}
        for mode in ACT_MODES:
            key = jax.random.fold_in(eval_key, 0xF1AA1)
            res = evaluate(env, agents, key, episodes, mode, reference, chunk=cfg.eval_episodes)
            final["modes"][mode] = [{k: v for k, v in r.items() if k != "returns"} for r in res]
            timed = [r | {"train_seconds": round(train_seconds, 3)} for r in res]
            log.evaluation(step, f"final-{mode}", timed, seeds)
            if mode == "sample":
                log.marl_eval(spec.env_id, cfg.algo, step, res, seeds, absolute=True)
        final["behaviour"] = {k: v for k, v in ds.stats().items() if k.startswith("return")}
        final["dataset_checksum"] = ds.checksum
        final["hardware"] = hardware()
        write_atomic(run / "final.json", json.dumps(final, indent=2))
    log.close()
    return Run(run, final)


def config_from_json(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a frozen config dataclass from its JSON form (lists back to tuples)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        if k not in fields:
            raise ValueError(f"{cls.__name__} has no field {k!r}")
        kwargs[k] = tuple(v) if isinstance(v, list) else v
    return cls(**kwargs)


class LoadedRun(NamedTuple):
    """A run directory's latest checkpoint, rebuilt (see :func:`load_run`)."""

    record: dict[str, Any]
    """The run's ``config.json``: algorithm, configs, dataset, spec, seeds, command."""
    agent_cls: type
    agent_config: Any
    agents: Any
    """The agents of every seed, stacked on a leading axis (as ``train`` vmaps them)."""
    step: int

    @property
    def spec(self) -> EnvSpec:
        return EnvSpec.from_dict(self.record["spec"])

    @property
    def seeds(self) -> list[int]:
        return list(self.record["train"]["seeds"])


def load_run(run: Path) -> LoadedRun:
    """``(record, agent_cls, agent_config, agents, step)`` of a run directory's checkpoint."""
    run = Path(run)
    if not (run / "config.json").exists():
        raise ValueError(f"{run} is not a run directory (no config.json)")
    record = json.loads((run / "config.json").read_text())
    agent_cls = get_agent(record["algo"])
    agent_config = config_from_json(agent_cls.Config, record["agent"])
    spec = EnvSpec.from_dict(record["spec"])
    keys = jnp.stack([jax.random.PRNGKey(s) for s in record["train"]["seeds"]])
    template = jax.jit(jax.vmap(lambda k: agent_cls.create(k, spec, agent_config)))(keys)
    agents, step = load_checkpoint(run, template)
    return LoadedRun(record, agent_cls, agent_config, agents, step)
