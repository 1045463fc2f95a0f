"""``macflow train``: a run directory around the training loop of :mod:`macflow.loop`.

The dataset goes to the device once. :func:`macflow.loop.fit` runs K updates (``log_every``) of
every seed per jitted call and checks them for NaN/inf; after each call this module logs the
averaged metrics, evaluates the decentralised policy and writes an atomic checkpoint when due,
and at the end runs the final evaluation (``final.json``). Every evaluation row carries
``train_seconds``: the wall clock spent so far on updates and stage preparation (compilation
included; evaluations and checkpoints excluded), counted from the start of this process's
training (it restarts at 0 on ``--resume``). Batches are drawn with keys derived from (seed,
update number) and the agents carry their own RNG, so a resumed run repeats exactly what an
uninterrupted one computes.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from macflow import __version__, cache_root
from macflow.agents import ACT_MODES, get_agent
from macflow.data import Sampler, load
from macflow.data.imports import cached_import
from macflow.envs import entry, make_env
from macflow.evaluate import evaluate, final_evaluation
from macflow.files import write_atomic
from macflow.loop import (
    Chunk,
    TrainingDiverged,
    create_agents,
    data_keys,
    fit,
    make_chunk,
    seed_keys,
)
from macflow.progress import progress_bar
from macflow.runs import CHECKPOINT, RunLog, load_checkpoint, save_checkpoint
from macflow.spec import EnvSpec


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


def resolve_dataset(
    dataset: str | Path | None, task: str | None, command: str | None = None
) -> Path:
    """The dataset directory a run trains on: ``dataset`` (a macflow dataset, or one of the
    field's formats converted once into the cache, ``command`` in its provenance), else
    ``task``'s default scripted dataset."""
    if dataset is None and task is None:
        raise ValueError("give --dataset DIR or --task ID (its default dataset is collected)")
    return cached_import(dataset, command) if dataset else default_dataset(task)


def dataset_spec(
    dataset: str | Path | None, task: str | None, command: str | None = None
) -> EnvSpec | None:
    """The spec a run of ``dataset``/``task`` will train on, without collecting anything (the
    presets are resolved for it before training); None when neither is given."""
    if dataset:
        from macflow.data import read_meta

        return read_meta(resolve_dataset(dataset, task, command))["spec"]
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


@dataclasses.dataclass
class Run:
    """What ``train`` returns: where it wrote and the final evaluation."""

    path: Path
    final: dict[str, Any] | None


class _Setup(NamedTuple):
    """What a run is, resolved from its options before anything is written."""

    ds: Any
    env: Any
    """None for an imported dataset of a task macflow cannot run (no evaluation)."""
    agent_cls: type
    agent_config: Any
    stages: list
    seeds: list[int]
    run: Path
    record: dict[str, Any]


def _setup(cfg: TrainConfig, agent_config: Any, command: str | None) -> _Setup:
    dataset_path = resolve_dataset(cfg.dataset, cfg.task, command)
    ds = load(dataset_path)
    spec = ds.spec
    if cfg.task is not None and cfg.task != spec.env_id:
        raise ValueError(f"--task {cfg.task} does not match the dataset's task {spec.env_id}")
    try:
        env = make_env(spec.env_id, **ds.env_kwargs)
    except KeyError:
        env = None  # an imported dataset of a task macflow cannot run: train without evaluation
    agent_cls = get_agent(cfg.algo)
    reason = agent_cls.supports(spec)
    if reason is not None:
        raise ValueError(reason)
    if agent_config is None:
        if cfg.preset not in agent_cls.presets:
            raise ValueError(
                f"{cfg.algo} has presets {sorted(agent_cls.presets)}, not {cfg.preset}"
            )
        agent_config = agent_cls.presets[cfg.preset](spec)
    stages = agent_cls.stages(agent_config, cfg.steps)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = cfg.name or f"{spec.env_id.replace('/', '-')}-{cfg.algo}-{stamp}"
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
    run = Path(cfg.out) / name
    return _Setup(ds, env, agent_cls, agent_config, stages, list(cfg.seeds), run, record)


def _open(cfg: TrainConfig, setup: _Setup, agents: Any) -> tuple[Any, int]:
    """Check a ``--resume`` against the run's record and load its checkpoint, or refuse to
    overwrite a run; writes ``config.json``. Returns the agents and the update to start from."""
    run, record = setup.run, setup.record
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
    return agents, step


def _columns(setup: _Setup, sampler: Any) -> list[str]:
    """The metrics every stage's ``update`` reports, in order (the columns of metrics.csv)."""
    spec, cls, config = setup.ds.spec, setup.agent_cls, setup.agent_config
    example = sampler.sample(jax.random.PRNGKey(0), 2)
    abstract = jax.eval_shape(lambda k: cls.create(k, spec, config), seed_keys(setup.seeds)[0])
    columns: list[str] = []
    for stage in setup.stages:
        info = jax.eval_shape(lambda a, b, s=stage.name: a.update(b, s)[1], abstract, example)
        columns += [k for k in info if k not in columns]
    return columns


def _estimate(
    cfg: TrainConfig, setup: _Setup, agents: Any, sampler: Any, step: int, chunk: Any
) -> str:
    """``estimate_text`` from timing a few updates of the current stage on a throw-away copy
    (after compiling them), so the estimate comes within seconds, not after a logged chunk."""
    stages = setup.stages
    ends = list(itertools.accumulate(s.steps for s in stages))
    first = next((i for i, end in enumerate(ends) if step < end), 0)
    k = min(cfg.log_every, 50)
    keys = data_keys(setup.seeds)
    probe = functools.partial(chunk, agents, None, sampler, keys, step, stages[first].name, k)
    jax.block_until_ready(probe())
    t0 = time.perf_counter()
    jax.block_until_ready(probe())
    per = (time.perf_counter() - t0) / k
    return estimate_text(per, ends[first] - step, ends[-1] - ends[first], ends[first])


class _Schedule:
    """What ``train`` does after every jitted call: log, evaluate when due, checkpoint, and
    move the progress bar."""

    def __init__(self, cfg: TrainConfig, setup: _Setup, log: RunLog, bar, task, step: int):
        self.cfg, self.setup, self.log, self.bar, self.task = cfg, setup, log, bar, task
        self.last_good, self.train_seconds, self.latest = step, 0.0, ""

    def __call__(self, c: Chunk) -> None:
        cfg, seeds, env = self.cfg, self.setup.seeds, self.setup.env
        self.train_seconds = c.train_seconds
        per_seed = [{m: float(v[i]) for m, v in c.means.items()} for i in range(len(seeds))]
        self.log.train(c.step, c.stage.name, per_seed, seeds)
        due = cfg.eval_every and (c.step - c.offset) % cfg.eval_every == 0
        if env is not None and c.stage.evaluate and due:
            for mode in ACT_MODES:
                key = jax.random.fold_in(EVAL_KEY, c.step)
                res = evaluate(env, c.agents, key, cfg.eval_episodes, mode, self.reference)
                timed = [r | {"train_seconds": round(c.train_seconds, 3)} for r in res]
                self.log.evaluation(c.step, mode, timed, seeds)
                if mode == "sample":
                    self.log.marl_eval(self.env_id, cfg.algo, c.step, res, seeds)
                    self.latest = f"return {np.mean([r['return_mean'] for r in res]):.4g}"
        end = c.offset + c.stage.steps
        if (cfg.checkpoint_every and c.step % cfg.checkpoint_every == 0) or c.step == end:
            save_checkpoint(self.setup.run, c.agents, c.step)
            self.last_good = c.step
        rate = f"{c.updates / c.seconds:,.0f} upd/s"
        self.bar.update(self.task, completed=c.step, rate=rate, eval=self.latest)

    @property
    def reference(self):
        return self.setup.ds.reference_returns

    @property
    def env_id(self) -> str:
        return self.setup.ds.spec.env_id


EVAL_KEY = jax.random.PRNGKey(0xE7A1)
"""Periodic evaluations fold in the update number, the final one ``0xF1AA1``."""


def _final(cfg: TrainConfig, setup: _Setup, agents, log: RunLog, step: int, seconds: float):
    """The closing evaluation (``final_eval_factor`` x the episodes), logged and written as
    ``final.json``; None when the run cannot or should not be evaluated."""
    ds, env, seeds = setup.ds, setup.env, setup.seeds
    if env is None or not setup.stages[-1].evaluate:
        return None
    episodes = cfg.eval_episodes * cfg.final_eval_factor
    key = jax.random.fold_in(EVAL_KEY, 0xF1AA1)
    final, full = final_evaluation(
        env, agents, key, episodes, cfg.eval_episodes, ds.reference_returns, step, seeds
    )
    for mode, res in full.items():
        timed = [r | {"train_seconds": round(seconds, 3)} for r in res]
        log.evaluation(step, f"final-{mode}", timed, seeds)
        if mode == "sample":
            log.marl_eval(ds.spec.env_id, cfg.algo, step, res, seeds, absolute=True)
    final["behaviour"] = {k: v for k, v in ds.stats().items() if k.startswith("return")}
    final["dataset_checksum"] = ds.checksum
    final["hardware"] = hardware()
    write_atomic(setup.run / "final.json", json.dumps(final, indent=2))
    return final


def train(
    cfg: TrainConfig, agent_config: Any = None, console=None, command: str | None = None
) -> Run:
    """Train ``cfg.algo`` with ``agent_config`` (default: its ``cfg.preset`` for the dataset's
    task); see the module docstring. ``console``: a ``rich`` console for the progress bar;
    ``command``: the command line recorded in ``config.json`` (``macflow train`` passes its own).
    """
    setup = _setup(cfg, agent_config, command)
    spec, stages, seeds, run = setup.ds.spec, setup.stages, setup.seeds, setup.run
    agents = create_agents(setup.agent_cls, spec, setup.agent_config, seeds)
    agents, step = _open(cfg, setup, agents)
    sampler = Sampler.from_dataset(setup.ds)
    log = RunLog(run, _columns(setup, sampler), cfg.tensorboard)
    if cfg.resume:
        log.truncate_after(step)
    else:
        save_checkpoint(run, agents, 0)

    total = sum(s.steps for s in stages)
    chunk = make_chunk(cfg.batch_size)
    say = console.print if console is not None else print
    say(plan_text(cfg, spec, setup.agent_config, stages, seeds))
    ends = itertools.accumulate(s.steps for s in stages)
    current = next((s for s, end in zip(stages, ends, strict=True) if step < end), stages[0])
    if total - step >= PROBE_FROM and not current.prepare:
        say(_estimate(cfg, setup, agents, sampler, step, chunk))
    bar = progress_bar("rate", "eval", console=console, disable=not cfg.progress)
    with bar:
        task = bar.add_task(run.name, total=total, completed=step, rate="", eval="")
        after = _Schedule(cfg, setup, log, bar, task, step)
        try:
            agents = fit(
                agents,
                sampler,
                stages,
                seeds,
                cfg.batch_size,
                cfg.log_every,
                start=step,
                on_chunk=after,
                on_prepare=lambda s: bar.update(task, rate=f"preparing {s.name}"),
                chunk=chunk,
            )
        except TrainingDiverged as err:
            raise TrainingDiverged(
                f"{err} The last good checkpoint is {run / CHECKPOINT} (update "
                f"{after.last_good}); lower the learning rate or check the data's scale."
            ) from None
    final = _final(cfg, setup, agents, log, max(step, total), after.train_seconds)
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
    template = create_agents(agent_cls, spec, agent_config, record["train"]["seeds"])
    agents, step = load_checkpoint(run, template)
    return LoadedRun(record, agent_cls, agent_config, agents, step)


def evaluate_run(run: Path, episodes: int | None = None, seed: int = 0) -> dict:
    """Evaluate a run directory's checkpoint in both noise modes (``macflow eval``); writes and
    returns ``run/eval.json``. ``episodes`` defaults to the run's final-evaluation count."""
    from macflow.data import read_meta

    record, _, _, agents, step = load_run(run)
    try:
        env = make_env(record["dataset"]["env_id"], **record["dataset"]["env_kwargs"])
    except KeyError as err:
        raise ValueError(f"{run} cannot be evaluated: {err.args[0]}") from err
    train = record["train"]
    episodes = episodes or train["eval_episodes"] * train["final_eval_factor"]
    reference = None
    if Path(train["dataset"], "meta.json").exists():
        reference = read_meta(train["dataset"])["reference_returns"]
    key = jax.random.PRNGKey(seed)
    final, _ = final_evaluation(
        env, agents, key, episodes, train["eval_episodes"], reference, step, train["seeds"]
    )
    write_atomic(Path(run) / "eval.json", json.dumps(final, indent=2))
    return final
