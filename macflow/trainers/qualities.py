"""Dataset quality levels as the field defines them, built from an online trainer's snapshots.

A trainer saves policy snapshots along its learning curve, each with the mean return of the
policy that collects data (stochastic, as it will be used). Levels, with the normalised return
``100 * (R - R_random) / (R_expert - R_random)``:

- ``expert`` / ``good``: the best snapshot. Its return is the expert reference return.
- ``medium``: the snapshot whose normalised return is closest to 50 (half-way from random to
  expert, the field's "about half the expert's return", which also works for negative returns).
- ``poor`` (SMAX): the snapshot closest to 20.
- ``random``: uniformly random (legal) actions. Their return is the random reference return.
- ``medium-replay``: what training generated up to the medium snapshot (a replay buffer, or for
  on-policy trainers, episodes of every snapshot up to medium in equal shares).
- ``replay`` (SMAX): the same over the whole training run.
- ``medium-expert``: half the episodes from medium, half from expert.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from macflow import cache_root

CONTINUOUS = ("expert", "medium", "medium-replay", "random", "medium-expert")
"""Quality levels of MPE and MuJoCo datasets (OMAR / D4RL naming)."""
DISCRETE = ("good", "medium", "poor", "replay")
"""Quality levels of SMAX datasets (OG-MARL naming)."""
LEVELS = {"expert": 100.0, "good": 100.0, "medium": 50.0, "poor": 20.0}
"""Target normalised return of each single-policy level."""


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One saved policy on the learning curve."""

    index: int
    """Position in the curve; snapshot files are named by it."""
    env_steps: int
    """Environment steps of training when it was saved."""
    return_mean: float
    """Mean return of the (stochastic) behaviour policy."""
    return_std: float


@dataclasses.dataclass(frozen=True)
class Curve:
    """The learning curve of a trained behaviour policy."""

    snapshots: tuple[Snapshot, ...]
    random_return: float
    """Mean return of uniformly random (legal) actions."""
    random_std: float = 0.0

    @property
    def expert(self) -> Snapshot:
        return max(self.snapshots, key=lambda s: s.return_mean)

    def normalised(self, value: float) -> float:
        lo, hi = self.random_return, self.expert.return_mean
        return 100.0 * (value - lo) / (hi - lo)

    def at_level(self, level: float) -> Snapshot:
        """The snapshot, up to the expert, whose normalised return is closest to ``level``."""
        candidates = [s for s in self.snapshots if s.index <= self.expert.index]
        return min(candidates, key=lambda s: abs(self.normalised(s.return_mean) - level))

    def for_quality(self, quality: str) -> Snapshot:
        """The single snapshot behind ``quality`` (expert/good/medium/poor)."""
        return self.at_level(LEVELS[quality])

    def reference_returns(self) -> dict[str, float]:
        return {"random": self.random_return, "expert": self.expert.return_mean}

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Curve:
        data = json.loads(text)
        snaps = tuple(Snapshot(**s) for s in data.pop("snapshots"))
        return cls(snapshots=snaps, **data)


def qualities(discrete: bool) -> tuple[str, ...]:
    """The quality levels of a suite: SMAX (discrete) or MPE/MuJoCo (continuous)."""
    return DISCRETE if discrete else CONTINUOUS


def check_quality(env_id: str, discrete: bool, quality: str) -> None:
    allowed = qualities(discrete)
    if quality not in allowed:
        raise ValueError(f"{env_id} has no quality {quality!r}; choose one of {', '.join(allowed)}")


class Trainer(Protocol):
    """An online trainer's frozen config. ``fit`` trains (resuming from ``directory``, with a
    progress bar on ``console``) and returns the curve; ``collect`` builds one quality's dataset
    from the snapshots in ``directory``, of ``transitions`` rows rounded up to whole episodes, or
    of ``episodes`` episodes when that is given instead (a replay buffer's ``medium-replay`` holds
    at most what training produced)."""

    name: ClassVar[str]

    @classmethod
    def quick(cls) -> Trainer:
        """A much cheaper config (minutes) for smoke tests and ``--quick``."""
        ...

    def fit(self, env: Any, seed: int, directory: Path, console: Any) -> Curve: ...

    def collect(
        self,
        env: Any,
        directory: Path,
        curve: Curve,
        quality: str,
        transitions: int | None,
        seed: int,
        console: Any,
        episodes: int | None = None,
    ) -> Any: ...


def behaviour_dir(env: Any, trainer: Any, seed: int) -> Path:
    """Cache directory of a trained behaviour policy: one per task, env kwargs, trainer config
    and seed, so every quality of a task reuses the same training."""
    from macflow.envs import env_kwargs

    key = json.dumps(
        {"env": env_kwargs(env), "trainer": dataclasses.asdict(trainer), "seed": seed},
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    task = env.spec.env_id.replace("/", "-")
    return cache_root() / "behaviour" / task / f"{trainer.name}-{digest}-seed{seed}"


def make_dataset(
    env: Any,
    trainer: Trainer,
    quality: str,
    transitions: int | None,
    seed: int = 0,
    console: Any = None,
    episodes: int | None = None,
) -> Any:
    """Train ``trainer`` on ``env`` (or reuse its cached training), then collect ``quality``:
    about ``transitions`` rows, or exactly ``episodes`` episodes when that is given."""
    check_quality(env.spec.env_id, env.spec.discrete, quality)
    if (transitions is None) == (episodes is None):
        raise ValueError("give exactly one of transitions and episodes")
    for name, value in (("transitions", transitions), ("episodes", episodes)):
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")
    directory = behaviour_dir(env, trainer, seed)
    curve = trainer.fit(env, seed, directory, console)
    return trainer.collect(
        env, directory, curve, quality, transitions, seed, console, episodes=episodes
    )


def with_quick(trainer: Any) -> Any:
    """``type(trainer).quick()`` keeping every field that ``trainer`` sets away from its
    defaults (``--quick`` with trainer options given explicitly)."""
    base = type(trainer)()
    changed = {
        f.name: getattr(trainer, f.name)
        for f in dataclasses.fields(trainer)
        if getattr(trainer, f.name) != getattr(base, f.name)
    }
    return dataclasses.replace(type(trainer).quick(), **changed)


EnvT = TypeVar("EnvT")
TrainerT = TypeVar("TrainerT")


@dataclasses.dataclass(frozen=True)
class QualityOptions(Generic[EnvT, TrainerT]):
    """Generate a dataset at one of the field's quality levels with a trained behaviour policy.

    The behaviour policy is trained on first use and cached (``~/.cache/macflow/behaviour``,
    resumable if interrupted); later qualities of the same task reuse it."""

    env: EnvT
    """Task parameters."""
    trainer: TrainerT
    """The online trainer that produces the behaviour policies."""
    out: Path
    """Dataset directory to write (atomically: an interrupted write leaves no partial data)."""
    quality: str
    """MPE and MuJoCo: expert, medium, medium-replay, random, medium-expert. SMAX: good, medium,
    poor, replay. See docs/datasets.md for the definitions."""
    transitions: int | None = None
    """Size of the dataset in transitions, rounded up to whole episodes (default 1,000,000, the
    field's size; 100,000 with --quick). medium-replay/replay hold at most what training made."""
    episodes: int | None = None
    """Size in episodes instead of transitions."""
    quick: bool = False
    """A much cheaper behaviour training (minutes) and a smaller default size; trainer options
    given explicitly still apply."""
    seed: int = 0
    """Seed of the behaviour training and of the collection."""
    overwrite: bool = False
    """Replace an existing dataset at ``out``."""

    def __post_init__(self):
        # Checked here, so that the command line (tyro builds this class) and Python callers
        # get the same one-line error before any training.
        from macflow.data.collect import check_count, check_seed

        for name in ("transitions", "episodes"):
            if getattr(self, name) is not None:
                check_count(getattr(self, name), name)
        if self.transitions is not None and self.episodes is not None:
            raise ValueError("--transitions and --episodes both set the size: give one of them")
        check_seed(self.seed)


def collect_quality(
    options: QualityOptions, command: str | None = None, console: Any = None
) -> Any:
    """Train (or reuse) the behaviour policy, collect the quality level and save it, with
    progress bars on ``console`` (a ``rich`` console); returns the saved dataset. ``command``
    and the seconds it took are recorded in the provenance."""
    from macflow.data import fields_for, save
    from macflow.data.io import check_target
    from macflow.files import hold
    from macflow.progress import progress_bar

    trainer, out = options.trainer, Path(options.out).absolute()
    if options.quick:
        trainer = with_quick(trainer)
    size = options.transitions or (100_000 if options.quick else 1_000_000)
    if options.episodes is not None:
        size = None
    # Refuse an existing dataset (without --overwrite), or another process writing ``out``,
    # before training; the lock is held until the dataset is written.
    check_target(out, options.overwrite)
    with hold(out, command):
        check_target(out, options.overwrite)
        start = time.perf_counter()
        env, episodes = options.env, options.episodes
        ds = make_dataset(
            env, trainer, options.quality, size, options.seed, console=console, episodes=episodes
        )
        provenance = dict(ds.provenance)
        provenance["command"] = command
        provenance["seconds"] = round(time.perf_counter() - start, 1)
        ds = dataclasses.replace(ds, provenance=provenance)
        with progress_bar(console=console) as bar:
            write = bar.add_task(f"write {out}", total=len(fields_for(env.spec)))
            on_field = lambda _: bar.advance(write)  # noqa: E731
            return save(ds, out, overwrite=options.overwrite, on_field=on_field)
