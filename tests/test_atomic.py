"""Nothing half-written ever loads: interrupted writes leave the old dataset, or none."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from macflow.data import DatasetError, load, save

import builders


class Interrupt(BaseException):
    pass


def _interrupt_after(monkeypatch, n_fields):
    real = np.lib.format.write_array
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > n_fields:
            raise Interrupt("Ctrl-C while writing")
        return real(*args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", flaky)


def test_interrupted_overwrite_keeps_the_old_dataset(tmp_ds, monkeypatch):
    old = save(builders.dataset(True), tmp_ds)
    new = builders.dataset(True, lengths=(2, 2), terminal=(True, True))
    _interrupt_after(monkeypatch, 3)
    with pytest.raises(Interrupt):
        save(new, tmp_ds, overwrite=True)
    back = load(tmp_ds)
    assert back.checksum == old.checksum and back.num_transitions == 10
    assert sorted(p.name for p in tmp_ds.parent.iterdir()) == ["ds"]  # no temporary left


def test_interrupted_first_write_leaves_no_dataset(tmp_ds, monkeypatch):
    _interrupt_after(monkeypatch, 5)
    with pytest.raises(Interrupt):
        save(builders.dataset(False), tmp_ds)
    with pytest.raises(DatasetError, match="no dataset here"):
        load(tmp_ds)


CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from macflow.data import Dataset, save
    from macflow.spec import EnvSpec

    T, E, N, O, S = 400_000, 4_000, 4, 32, 8
    spec = EnvSpec("test/big", N, O, S, 2, discrete=False, episode_limit=100,
                   action_low=(-1.0, -1.0), action_high=(1.0, 1.0))
    ends = np.zeros(T, bool)
    ends[99::100] = True
    arrays = {
        "observations": np.ones((T, N, O), np.float32),
        "states": np.ones((T, S), np.float32),
        "actions": np.zeros((T, N, 2), np.float32),
        "rewards": np.ones(T, np.float32),
        "terminals": ends,
        "truncations": np.zeros(T, bool),
        "final_observations": np.ones((E, N, O), np.float32),
        "final_states": np.ones((E, S), np.float32),
    }
    print("writing", flush=True)
    save(Dataset(arrays=arrays, spec=spec, provenance={"method": "test"}), sys.argv[1],
         overwrite=True)
    print("done", flush=True)
    """
)


def test_killed_writer_process_leaves_the_old_dataset(tmp_ds):
    """SIGKILL (no cleanup at all) in the middle of replacing a dataset with a 200 MB one."""
    old = save(builders.dataset(True), tmp_ds)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_ds)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "writing"
    deadline = time.monotonic() + 60
    while not list(tmp_ds.parent.glob(".ds.tmp-*")) and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(0.05)  # let it get some way into the 200 MB
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    leftovers = list(tmp_ds.parent.glob(".ds.tmp-*"))
    assert leftovers, "the kill should land while the temporary directory exists"
    back = load(tmp_ds)
    assert back.checksum == old.checksum and back.num_transitions == 10
