"""``macflow finetune``: offline-to-online fine-tuning of a trained run, in a run directory.

It starts from an offline run's checkpoint (all its seeds, vmapped as in training), acts in the
real environment with the decentralised policies and keeps training them with the same losses on
batches that mix the offline dataset with the online transitions (:mod:`macflow.online_loop`).
Choices, each with a switch:

- **Online share** ``--online-ratio R`` (default 0.5): half of every batch from the online
  buffer, half from the dataset, as RLPD's symmetric sampling (arXiv 2302.02948): the data keep
  anchoring the critic and the distillation while the new transitions correct them.
- **The teacher** stays frozen (``--teacher frozen``, default): the joint flow models the
  dataset's behaviour, which is what the students are kept close to; its targets are computed on
  the fly for every row (the offline cache covers dataset rows only). ``--teacher fitted`` also
  trains it on the mixed batches (the agent's joint stage, e.g. MAC-Flow's ``all``).
- **alpha** (the pull toward the data or teacher) is kept (``--alpha kept``, default);
  ``--alpha annealed`` lowers it linearly over four quarters of the budget (1, 3/4, 1/2, 1/4 of
  its value; one compiled program per quarter).

Everything is written to ``RUN/<name>`` (default ``RUN/finetune``) with the layout of a training
run, every ``step`` counted in environment steps per seed: ``config.json``, ``metrics.csv``,
``evals.csv`` (both act modes every ``--eval-every`` environment steps, the first row at 0 is the
offline start), ``marl_eval.json``, ``final.json`` and an atomic checkpoint of the agents, the
online buffer, the environments and the step counter, so ``--resume`` after a kill repeats the
uninterrupted run bit for bit. A NaN or inf stops it (exit status 3).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from macflow import __version__
from macflow.agents import ACT_MODES
from macflow.data import Sampler, load
from macflow.envs import make_env
from macflow.evaluate import evaluate, final_evaluation
from macflow.files import hold, write_atomic
from macflow.loop import check_finite, seed_keys
from macflow.online_loop import Plan, make_chunk, start_all
from macflow.progress import progress_bar
from macflow.runs import RunLog
from macflow.train import check_intervals, check_name, hardware, load_run


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Options of ``macflow finetune``."""

    env_steps: int = 200_000
    """Environment steps per seed, counted over the parallel environments."""
    envs: int = 16
    """Parallel environments per seed (one vector step steps all of them)."""
    online_ratio: float = 0.5
    """Share R of every batch drawn from the online buffer (the rest from the dataset)."""
    updates_per_step: int = 4
    """Updates per vector step (so ``updates_per_step / envs`` per environment step)."""
    batch_size: int | None = None
    """Transitions per update and seed (default: the offline run's)."""
    capacity: int | None = None
    """Rows of the online buffer per seed (default: ``env_steps``, nothing is dropped)."""
    teacher: Literal["frozen", "fitted"] = "frozen"
    """A flow teacher stays as trained offline, or is also fitted on the mixed batches."""
    alpha: Literal["kept", "annealed"] = "kept"
    """The agent's ``alpha`` stays, or falls linearly over four quarters of the budget."""
    log_every: int = 2000
    """Environment steps per jitted call (a multiple of ``envs``); metrics average over them."""
    eval_every: int = 10_000
    """Evaluate every this many environment steps (a multiple of ``log_every``; 0: only at the
    start and the end)."""
    eval_episodes: int = 32
    """Episodes per evaluation, per seed and act mode (the final one: 10x)."""
    checkpoint_every: int = 10_000
    """Checkpoint every this many environment steps (a multiple of ``log_every``)."""
    name: str = "finetune"
    """Directory inside RUN to write to."""
    resume: bool = False
    """Continue ``RUN/<name>`` from its checkpoint (``env_steps`` may be raised)."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self):
        for name in ("env_steps", "envs", "updates_per_step", "log_every", "eval_episodes"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        for name in ("batch_size", "capacity"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if not 0 <= self.online_ratio <= 1:
            raise ValueError(f"--online-ratio must lie in [0, 1], got {self.online_ratio}")
        if self.log_every % self.envs:
            raise ValueError(
                f"--log-every ({self.log_every}) must be a multiple of --envs ({self.envs})"
            )
        check_intervals(self, ("eval_every", "checkpoint_every"))
        check_name(self.name, "RUN")


EVAL_KEY = jax.random.PRNGKey(0x0F1E)
"""Evaluations fold in the environment step, the final one ``0xF1AA1``."""
ANNEAL = (1.0, 0.75, 0.5, 0.25)


def _jsonable(cfg: FinetuneConfig) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()}


def read_record_of(out: Path) -> dict:
    """A fine-tuning directory's ``config.json`` (a ValueError naming it if absent or damaged)."""
    path = out / "config.json"
    try:
        record = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ValueError(f"--resume: {out} has no fine-tuning to resume (no config.json)") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is damaged ({err})") from None
    if not isinstance(record, dict) or not isinstance(record.get("finetune"), dict):
        raise ValueError(f"{path} is not a fine-tuning's record")
    return record


class _Online:
    """A resolved fine-tuning: the offline run, its dataset and env, and the loop's plan."""

    def __init__(self, run: Path, cfg: FinetuneConfig):
        self.cfg, self.run = cfg, Path(run)
        record, cls, config, agents, step = load_run(run)
        self.record, self.cls, self.offline_config, self.offline_step = record, cls, config, step
        self.seeds = list(record["train"]["seeds"])
        self.env = _env(record, self.run)
        if self.env.host:
            raise ValueError(
                f"{record['dataset']['env_id']} runs on the host (MuJoCo): fine-tuning supports "
                "the JAX tasks (toys, MPE, SMAX) so far"
            )
        self.ds = load(record["train"]["dataset"])
        if self.ds.checksum != record["dataset"]["checksum"]:
            raise ValueError(
                f"{record['train']['dataset']} is not the dataset {self.run} was trained on "
                "(its checksum differs)"
            )
        self.agents = agents
        self.batch = cfg.batch_size or record["train"]["batch_size"]
        self.stage = _stage(cls, config, cfg.teacher)
        self.out = self.run / cfg.name
        self.capacity = cfg.capacity or cfg.env_steps
        if cfg.resume and cfg.capacity is None and (self.out / "config.json").exists():
            self.capacity = read_record_of(self.out)["finetune"]["capacity"]  # a raised budget
        online = round(cfg.online_ratio * self.batch)
        self.plan = Plan(self.stage, self.batch, online, cfg.updates_per_step)

    def config_at(self, env_step: int) -> Any:
        """The agent config for the quarter of the budget ``env_step`` falls in."""
        if self.cfg.alpha == "kept" or not hasattr(self.offline_config, "alpha"):
            return self.offline_config
        quarter = min(3, 4 * env_step // self.cfg.env_steps)
        alpha = self.offline_config.alpha * ANNEAL[quarter]
        return dataclasses.replace(self.offline_config, alpha=alpha)


def _env(record: dict, run: Path):
    try:
        return make_env(record["dataset"]["env_id"], **record["dataset"]["env_kwargs"])
    except KeyError as err:
        raise ValueError(f"{run} cannot be fine-tuned: {err}") from None


def _stage(cls, config, teacher: str) -> str:
    stages = cls.stages(config, 1)
    if teacher == "frozen":
        return stages[-1].name
    joint = [s.name for s in cls.stages(dataclasses.replace(config, schedule="simultaneous"), 1)] \
        if hasattr(config, "schedule") else []  # fmt: skip
    if not joint:
        raise ValueError(f"--teacher fitted: {cls.__name__} has no teacher to fit")
    return joint[-1]


def _with_config(agents: Any, config: Any) -> Any:
    """The same stacked agents with another static config (e.g. an annealed alpha)."""
    return agents.replace(config=config)


def _save(path: Path, carries: Any, step: int, seconds: float) -> None:
    """The whole carry (agents, buffer, environments) and the step; the seconds beside it, so the
    checkpoint's bytes are those of an uninterrupted run's."""
    leaves = jax.device_get(jax.tree.leaves(carries))
    state = {"step": step, "leaves": {str(i): x for i, x in enumerate(leaves)}}
    write_atomic(path, serialization.msgpack_serialize(state))
    write_atomic(path.with_suffix(".json"), json.dumps({"step": step, "seconds": seconds}))


def _restore(path: Path, template: Any) -> tuple[Any, int, float]:
    try:
        raw = serialization.msgpack_restore(path.read_bytes())
        leaves, treedef = jax.tree.flatten(template)
        stored = [raw["leaves"][str(i)] for i in range(len(leaves))]
        step = int(raw["step"])
    except FileNotFoundError:
        raise ValueError(f"--resume: {path} is missing: nothing to resume") from None
    except Exception as err:  # msgpack raises several kinds for a damaged file
        raise ValueError(f"{path} is damaged, not a whole fine-tuning checkpoint ({err})") from None
    for i, (a, b) in enumerate(zip(leaves, stored, strict=True)):
        if np.shape(a) != np.shape(b) or np.asarray(a).dtype != np.asarray(b).dtype:
            raise ValueError(f"{path} does not match this fine-tuning (array {i}: {np.shape(b)})")
    try:
        clock = json.loads(path.with_suffix(".json").read_text())
        seconds = float(clock["seconds"]) if int(clock["step"]) == step else 0.0
    except (OSError, ValueError, KeyError, TypeError):
        seconds = 0.0  # only the training clock is lost
    return jax.tree.unflatten(treedef, [jnp.asarray(x) for x in stored]), step, seconds


CHECKPOINT = Path("checkpoints") / "online.msgpack"


def finetune(
    run: Path, cfg: FinetuneConfig | None = None, console=None, command: str | None = None
) -> dict:
    """Fine-tune the offline run directory ``run`` online (see the module docstring); returns
    the final evaluation. Raises :class:`macflow.files.Busy` while another process writes it."""
    job = _Online(run, cfg or FinetuneConfig())
    with hold(job.out, command):
        return _finetune(job, console, command)


def _open(job: _Online, carries: Any, log: RunLog, command: str | None):
    cfg, out = job.cfg, job.out
    record = {
        "macflow_version": __version__,
        "command": command,
        "offline_run": str(Path(job.run).absolute()),
        "offline_step": job.offline_step,
        "algo": job.record["algo"],
        "finetune": _jsonable(cfg) | {"batch_size": job.batch, "capacity": job.capacity},
        "stage": job.stage,
        "dataset": job.record["dataset"],
        "seeds": job.seeds,
    }
    if cfg.resume:
        old = read_record_of(out)
        for key in ("envs", "online_ratio", "updates_per_step", "batch_size", "capacity",
                    "teacher", "alpha", "log_every"):  # fmt: skip
            if old["finetune"].get(key) != record["finetune"][key]:
                raise ValueError(
                    f"--resume: --{key.replace('_', '-')} must stay {old['finetune'][key]}"
                )
        carries, step, seconds = _restore(out / CHECKPOINT, carries)
        if step > cfg.env_steps:
            raise ValueError(
                f"--resume: {out / CHECKPOINT} is at environment step {step}; pass --env-steps "
                f"{step} or more"
            )
        log.resume(step if step else -1)  # at 0 the start's evaluation is redone
    elif out.exists():
        raise ValueError(f"{out} exists; pass --resume to continue it or choose another --name")
    else:
        step, seconds = 0, 0.0
        out.mkdir(parents=True)
        _save(out / CHECKPOINT, carries, 0, 0.0)
    write_atomic(out / "config.json", json.dumps(record, indent=2))
    return carries, step, seconds


def _evaluate(job: _Online, log: RunLog, agents, step: int, seconds: float) -> float:
    for mode in ACT_MODES:
        key = jax.random.fold_in(EVAL_KEY, step)
        res = evaluate(job.env, agents, key, job.cfg.eval_episodes, mode, job.ds.reference_returns)
        log.evaluation(
            step, mode, [r | {"train_seconds": round(seconds, 3)} for r in res], job.seeds
        )
        if mode == "sample":
            log.marl_eval(job.ds.spec.env_id, job.record["algo"], step, res, job.seeds)
            latest = float(np.mean([r["return_mean"] for r in res]))
    return latest


def _finetune(job: _Online, console, command) -> dict:
    cfg, env = job.cfg, job.env
    keys = jax.vmap(lambda k: jax.random.fold_in(k, 0x0F1E))(seed_keys(job.seeds))
    sampler = Sampler.from_dataset(job.ds)
    agents = _with_config(job.agents, job.config_at(0))
    carries = start_all(env, agents, keys, cfg.envs, job.capacity)
    columns = _columns(job, carries, sampler)
    log = RunLog(job.out, columns)
    carries, step, seconds = _open(job, carries, log, command)
    if step == 0:
        _evaluate(job, log, carries.agent, 0, 0.0)
    chunks = {}
    bar = progress_bar("rate", "eval", console=console, disable=not cfg.progress)
    latest = ""
    with bar:
        task = bar.add_task(
            f"finetune {job.out}", total=cfg.env_steps, completed=step, rate="", eval=""
        )
        while step < cfg.env_steps:
            config = job.config_at(step)
            if config not in chunks:
                chunks[config] = make_chunk(env, job.plan)
            carries = carries._replace(agent=_with_config(carries.agent, config))
            t = min(cfg.log_every, cfg.env_steps - step) // cfg.envs
            t0 = time.perf_counter()
            first = step // cfg.envs
            carries, means, finite, (total, count) = chunks[config](
                carries, sampler, keys, first, max(t, 1)
            )
            means, finite, total, count = jax.device_get((means, finite, total, count))
            dt = time.perf_counter() - t0
            seconds += dt
            check_finite(
                finite, job.seeds, step, max(t, 1) * cfg.envs, job.stage, "environment steps"
            )
            step += max(t, 1) * cfg.envs
            per_seed = [
                {**{m: float(v[i]) for m, v in means.items()},
                 "episode_return": float(total[i] / count[i]) if count[i] else float("nan")}
                for i in range(len(job.seeds))
            ]  # fmt: skip
            log.train(step, job.stage, per_seed, job.seeds)
            if cfg.eval_every and step % cfg.eval_every == 0:
                latest = f"return {_evaluate(job, log, carries.agent, step, seconds):.4g}"
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step >= cfg.env_steps:
                _save(job.out / CHECKPOINT, carries, step, seconds)
            vector = max(t, 1)
            rate = (
                f"{vector * cfg.envs / dt:,.0f} env steps/s, "
                f"{vector * cfg.updates_per_step / dt:,.0f} upd/s"
            )
            played = np.mean([r["episode_return"] for r in per_seed])
            bar.update(task, completed=step, rate=rate, eval=f"{latest} (episodes {played:.4g})")
    return _final(job, log, carries.agent, step, seconds)


def _columns(job: _Online, carries, sampler) -> list[str]:
    example = sampler.sample(jax.random.PRNGKey(0), 2)
    one = jax.tree.map(lambda x: x[0], carries.agent)
    info = jax.eval_shape(lambda a, b: a.update(b, job.stage, None)[1], one, example)
    return [*info, "episode_return"]


def _final(job: _Online, log: RunLog, agents, step: int, seconds: float) -> dict:
    cfg = job.cfg
    episodes = cfg.eval_episodes * 10
    key = jax.random.fold_in(EVAL_KEY, 0xF1AA1)
    final, full = final_evaluation(
        job.env, agents, key, episodes, cfg.eval_episodes, job.ds.reference_returns, step, job.seeds
    )
    for mode, res in full.items():
        log.evaluation(
            step,
            f"final-{mode}",
            [r | {"train_seconds": round(seconds, 3)} for r in res],
            job.seeds,
        )
        if mode == "sample":
            log.marl_eval(
                job.ds.spec.env_id, job.record["algo"], step, res, job.seeds, absolute=True
            )
    final["env_steps"] = step
    final["hardware"] = hardware()
    write_atomic(job.out / "final.json", json.dumps(final, indent=2))
    log.close()
    print(
        f"fine-tuned {job.run} for {step:,} environment steps per seed: {job.out}", file=sys.stderr
    )
    return final
