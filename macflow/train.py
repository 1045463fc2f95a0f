"""``macflow train``: a run directory around the training loop of :mod:`macflow.loop`.

The dataset goes to the device once. :func:`macflow.loop.fit` runs K updates (``log_every``) of
every seed per jitted call and checks them for NaN/inf; after each call this module logs the
averaged metrics, evaluates the decentralised policy and writes an atomic checkpoint when due,
and at the end runs the final evaluation (``final.json``). Every evaluation row carries
``train_seconds``: the wall clock spent so far on updates and stage preparation (compilation
included; evaluations and checkpoints excluded), saved with each checkpoint so that ``--resume``
continues the count (the time a killed process spent after its last checkpoint is lost). Batches
are drawn with keys derived from (seed, update number) and the agents carry their own RNG, so a
resumed run repeats exactly what an uninterrupted one computes.

One process at a time writes a run: ``train`` holds the run directory's lock
(:func:`macflow.files.hold`) from the check that it exists to the end of the final evaluation,
and refuses a second writer. A run directory appears whole: ``config.json`` and the update-0
checkpoint are written into a hidden sibling (``.NAME.tmp-PID``) that is renamed into place, and
a start killed before the rename leaves only that sibling, which the next start removes. So a
kill at any moment leaves a run that ``--resume`` completes to the files an uninterrupted run
writes: it drops what was logged after the checkpoint and whatever the final evaluation wrote
(recomputed identically), and a torn last line of a log (see :mod:`macflow.runs`).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import glob
import itertools
import json
import os
import shutil
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
from macflow.files import Busy, fsync_dir, hold, write_atomic
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
from macflow.runs import (
    CHECKPOINT,
    RECORD,
    RunLog,
    load_checkpoint,
    read_record,
    remove_leftovers,
    save_checkpoint,
)
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
    """Run directory name inside ``out`` (default: ``<task>-<algo>-<time>``)."""
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
        check_intervals(self, ("eval_every", "checkpoint_every"))
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds must be distinct and non-empty, got {self.seeds}")
        if self.name is not None:
            check_name(self.name, "--out")


def check_intervals(cfg: Any, names: tuple[str, ...]) -> None:
    """Each of ``cfg``'s ``names`` (e.g. ``eval_every``) must be a multiple of its ``log_every``."""
    for name in names:
        value = getattr(cfg, name)
        if value < 0 or value % cfg.log_every:
            raise ValueError(
                f"--{name.replace('_', '-')} ({value}) must be a multiple of --log-every "
                f"({cfg.log_every})"
            )


def check_name(name: str, inside: str) -> None:
    """``--name`` must be a plain directory name: a hidden name could be another run's lock or
    temporary directory, a separator would write outside ``inside``."""
    seps = [c for c in (os.sep, os.altsep) if c]
    if not name or name.startswith(".") or any(c in name for c in seps):
        raise ValueError(
            f"--name {name!r} must be a plain directory name inside {inside}: not empty, "
            "without a path separator, not starting with '.'"
        )


def default_dataset(task: str, episodes: int = 10_000) -> Path:
    """``task``'s default scripted dataset in the cache, collected on first use."""
    from macflow.data import save
    from macflow.data.collect import collect

    path = cache_root() / "datasets" / task.replace("/", "-") / "scripted"
    waiting = False
    while not (path / "meta.json").exists():
        e = entry(task)
        behaviour = e.behaviour_cls()
        if behaviour is None:
            raise ValueError(f"{task} has no scripted data generator; pass --dataset")
        try:
            with hold(path):
                if not (path / "meta.json").exists():  # else collected while we waited
                    print(f"collecting the default dataset of {task} into {path}", file=sys.stderr)
                    save(collect(e.env_cls()(), behaviour(), episodes), path)
        except Busy:  # another run collects it (e.g. a sweep's job): wait and use it
            if not waiting:
                print(f"waiting for the other process collecting {path}", file=sys.stderr)
                waiting = True
            time.sleep(0.5)
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


def _open(cfg: TrainConfig, setup: _Setup, log: RunLog) -> tuple[Any, int, float]:
    """Create the run directory, or check a ``--resume`` against it and load its checkpoint;
    refuse to overwrite a run. Called holding the run's lock. Returns the agents, the update to
    start from and the train seconds so far."""
    run = setup.run
    # Only the lock's holder makes temporary run directories: any there now are of killed starts.
    stale = sorted(run.parent.glob(f".{glob.escape(run.name)}.tmp-*"))
    for path in stale:
        shutil.rmtree(path)
    if run.exists():
        if not cfg.resume:
            raise ValueError(f"{run} exists; pass --resume to continue it or choose another --name")
        return _resume(cfg, setup, log)
    if cfg.resume:
        if not stale:
            raise ValueError(f"--resume: there is no run at {run} (start it without --resume)")
        print(f"note: a start of {run} was killed before it existed: starting it", file=sys.stderr)
    return _create(setup)


def _create(setup: _Setup) -> tuple[Any, int, float]:
    """Build ``config.json`` and the update-0 checkpoint in a hidden sibling and rename it into
    place: a run directory, once it exists, can always be resumed."""
    run = setup.run
    tmp = run.parent / f".{run.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        write_atomic(tmp / RECORD, json.dumps(setup.record, indent=2))
        agents = create_agents(setup.agent_cls, setup.ds.spec, setup.agent_config, setup.seeds)
        save_checkpoint(tmp, agents, 0)
        fsync_dir(tmp / CHECKPOINT.parent)
        fsync_dir(tmp)
        os.rename(tmp, run)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(run.parent)
    return agents, 0, 0.0


def _resume(cfg: TrainConfig, setup: _Setup, log: RunLog) -> tuple[Any, int, float]:
    """Check the run against this command, load its checkpoint and drop what it logged after
    it; nothing is written before every check passed."""
    run, record = setup.run, setup.record
    config, checkpoint = run / RECORD, run / CHECKPOINT
    if not config.exists():
        if checkpoint.exists():
            raise ValueError(f"--resume: {config} is missing: the checkpoint cannot be resumed")
        raise ValueError(f"--resume: {run} is not a run directory (no {RECORD})")
    old = read_record(run)
    for key in ("algo", "agent", "dataset", "spec"):
        if old[key] != json.loads(json.dumps(record[key])):
            raise ValueError(f"--resume: the run's {key} ({config}) differs from this command's")
    for key in ("seeds", "batch_size", "log_every"):
        if old["train"].get(key) != record["train"][key]:
            raise ValueError(
                f"--resume: --{key.replace('_', '-')} must stay {old['train'].get(key)} ({config})"
            )
    agents = create_agents(setup.agent_cls, setup.ds.spec, setup.agent_config, setup.seeds)
    step, seconds = 0, 0.0
    if checkpoint.exists():
        agents, step, seconds = load_checkpoint(run, agents)
    else:  # made before run directories appeared whole, and killed before its first checkpoint
        print(f"note: {run} has no checkpoint yet: resuming it from update 0", file=sys.stderr)
    total = sum(s.steps for s in setup.stages)
    if step > total:
        raise ValueError(
            f"--resume: the checkpoint {checkpoint} is at update {step}, past the {total} updates "
            f"of --steps {cfg.steps}; pass --steps {cfg.steps + step - total} or more"
        )
    log.resume(step)
    remove_leftovers(run)
    write_atomic(config, json.dumps(record, indent=2))
    if not checkpoint.exists():
        save_checkpoint(run, agents, 0)
    return agents, step, seconds


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

    def __init__(self, cfg: TrainConfig, setup: _Setup, log: RunLog, bar, task, step, seconds):
        self.cfg, self.setup, self.log, self.bar, self.task = cfg, setup, log, bar, task
        self.last_good, self.latest = step, ""
        self.before = self.train_seconds = seconds  # those of the run before this process

    def __call__(self, c: Chunk) -> None:
        cfg, seeds, env = self.cfg, self.setup.seeds, self.setup.env
        self.train_seconds = self.before + c.train_seconds
        per_seed = [{m: float(v[i]) for m, v in c.means.items()} for i in range(len(seeds))]
        self.log.train(c.step, c.stage.name, per_seed, seeds)
        due = cfg.eval_every and (c.step - c.offset) % cfg.eval_every == 0
        if env is not None and c.stage.evaluate and due:
            for mode in ACT_MODES:
                key = jax.random.fold_in(EVAL_KEY, c.step)
                res = evaluate(env, c.agents, key, cfg.eval_episodes, mode, self.reference)
                timed = [r | {"train_seconds": round(self.train_seconds, 3)} for r in res]
                self.log.evaluation(c.step, mode, timed, seeds)
                if mode == "sample":
                    self.log.marl_eval(self.env_id, cfg.algo, c.step, res, seeds)
                    self.latest = f"return {np.mean([r['return_mean'] for r in res]):.4g}"
        end = c.offset + c.stage.steps
        if (cfg.checkpoint_every and c.step % cfg.checkpoint_every == 0) or c.step == end:
            save_checkpoint(self.setup.run, c.agents, c.step, self.train_seconds)
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
    Raises :class:`macflow.files.Busy` while another process writes the same run.
    """
    setup = _setup(cfg, agent_config, command)
    if setup.env is None:
        print(
            f"note: no evaluation: {setup.ds.spec.env_id} is not a task macflow can run "
            "(`macflow envs` lists them), so the policy trains without being evaluated",
            file=sys.stderr,
        )
    with hold(setup.run, command):
        return _train(cfg, setup, console)


def _train(cfg: TrainConfig, setup: _Setup, console) -> Run:
    spec, stages, seeds, run = setup.ds.spec, setup.stages, setup.seeds, setup.run
    sampler = Sampler.from_dataset(setup.ds)
    log = RunLog(run, _columns(setup, sampler), cfg.tensorboard)
    agents, step, seconds = _open(cfg, setup, log)

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
        after = _Schedule(cfg, setup, log, bar, task, step, seconds)
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
    """``(record, agent_cls, agent_config, agents, step)`` of a run directory's checkpoint; a
    path that is not a run, or a damaged run, is a ValueError naming the file at fault."""
    run = Path(run)
    if not run.exists():
        raise ValueError(f"{run} does not exist (give a run directory of `macflow train`)")
    if not (run / RECORD).is_file():
        raise ValueError(f"{run} is not a run directory (no {RECORD})")
    record = read_record(run)
    try:
        agent_cls = get_agent(record["algo"])
        agent_config = config_from_json(agent_cls.Config, record["agent"])
        spec = EnvSpec.from_dict(record["spec"])
        seeds = list(record["train"]["seeds"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{run / RECORD} cannot be rebuilt into a run: {_says(err)}") from None
    template = create_agents(agent_cls, spec, agent_config, seeds)
    agents, step, _ = load_checkpoint(run, template)
    return LoadedRun(record, agent_cls, agent_config, agents, step)


def _says(err: Exception) -> str:
    """An exception's message (a KeyError's without the quotes str() adds)."""
    if isinstance(err, KeyError) and len(err.args) == 1:
        return f"no {err.args[0]!r}" if type(err) is KeyError else str(err.args[0])
    return str(err)


def evaluate_run(run: Path, episodes: int | None = None, seed: int = 0) -> dict:
    """Evaluate a run directory's checkpoint in both noise modes (``macflow eval``); writes and
    returns ``run/eval.json``. ``episodes`` defaults to the run's final-evaluation count."""
    from macflow.data import read_meta

    if episodes is not None and episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    record, _, _, agents, step = load_run(run)
    try:
        dataset, train = record["dataset"], record["train"]
        env_id, env_kwargs = dataset["env_id"], dataset["env_kwargs"]
        episodes = episodes or train["eval_episodes"] * train["final_eval_factor"]
        chunk, seeds = train["eval_episodes"], train["seeds"]
    except (KeyError, TypeError) as err:
        raise ValueError(f"{Path(run) / RECORD} cannot be evaluated: {_says(err)}") from None
    try:
        env = make_env(env_id, **env_kwargs)
    except (KeyError, TypeError) as err:
        raise ValueError(f"{run} cannot be evaluated: {_says(err)}") from err
    reference = None  # the dataset's, if it is still there
    if isinstance(train.get("dataset"), str) and Path(train["dataset"], "meta.json").is_file():
        reference = read_meta(train["dataset"])["reference_returns"]
    key = jax.random.PRNGKey(seed)
    final, _ = final_evaluation(env, agents, key, episodes, chunk, reference, step, seeds)
    write_atomic(Path(run) / "eval.json", json.dumps(final, indent=2))
    return final
