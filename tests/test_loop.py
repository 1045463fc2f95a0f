"""The public training loop (macflow.loop): what `macflow train` runs, callable without a run
directory, continuing bit-exactly from any update, and stopping at the first NaN."""

import dataclasses

import jax
import numpy as np
import pytest

from macflow import loop
from macflow.agents import Stage, get_agent
from macflow.data import Sampler, load
from macflow.data.collect import collect
from macflow.envs import entry, make_env
from macflow.train import TrainConfig, load_run, train

SEEDS = [0, 1]


@pytest.fixture(scope="module")
def coord():
    env = make_env("toy/coordination")
    ds = collect(env, entry("toy/coordination").behaviour_cls()(), 300, seed=0, chunk=300)
    return ds


def _bc(ds, **changes):
    cls = get_agent("bc")
    config = dataclasses.replace(cls.presets["paper"](ds.spec), hidden=(8,), **changes)
    return cls, config


def _equal(a, b) -> bool:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return all(np.array_equal(x, y) for x, y in pairs)


def test_fit_trains_what_train_trains(coord, tmp_path):
    from macflow.data import save

    path = save(coord, tmp_path / "ds").path
    cls, config = _bc(coord)
    cfg = TrainConfig(dataset=path, algo="bc", steps=40, log_every=20, eval_every=0,
                      checkpoint_every=0, seeds=tuple(SEEDS), out=tmp_path, name="run",
                      progress=False, batch_size=32)  # fmt: skip
    train(cfg, config)
    stored = load_run(tmp_path / "run")

    ds = load(path)
    calls = []
    agents = loop.create_agents("bc", ds.spec, config, SEEDS)
    agents = loop.fit(agents, Sampler.from_dataset(ds), cls.stages(config, 40), SEEDS,
                      batch_size=32, log_every=20, on_chunk=calls.append)  # fmt: skip
    assert stored.step == 40
    assert _equal(agents, stored.agents)
    assert [c.step for c in calls] == [20, 40]
    assert all(len(v) == len(SEEDS) for v in calls[-1].means.values())


def test_fit_continued_from_an_update_repeats_an_uninterrupted_fit(coord):
    cls, config = _bc(coord)
    sampler = Sampler.from_dataset(coord)
    stages = [Stage("bc", 30, evaluate=False)]
    start = loop.create_agents(cls, coord.spec, config, SEEDS)
    whole = loop.fit(start, sampler, stages, SEEDS, batch_size=32, log_every=10)
    half = loop.fit(start, sampler, [Stage("bc", 20, False)], SEEDS, batch_size=32, log_every=10)
    rest = loop.fit(half, sampler, stages, SEEDS, batch_size=32, log_every=10, start=20)
    assert _equal(whole, rest)
    assert not _equal(whole, half)


def test_fit_stops_at_the_first_nan_naming_seed_and_stage(coord):
    cls, config = _bc(coord, lr=1e30)
    agents = loop.create_agents(cls, coord.spec, config, SEEDS)
    seen = []
    with pytest.raises(loop.TrainingDiverged, match=r"became NaN/inf for seed \d.*stage bc"):
        loop.fit(agents, Sampler.from_dataset(coord), cls.stages(config, 30), SEEDS,
                 batch_size=32, log_every=10, on_chunk=seen.append)  # fmt: skip
    assert all(np.isfinite(v).all() for c in seen for v in c.means.values())
