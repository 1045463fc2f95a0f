"""The data layer under bad inputs and concurrent writers: one clear error naming the file (and
field), never a traceback from deep inside, never wrong data on disk.

Every input is a real file written by numpy, h5py or flashbax; a second writer is a real second
process holding the target's lock (:func:`macflow.files.hold`).
"""

import hashlib
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager

import numpy as np
import pytest
from rich.console import Console
from test_import_cfcql import pymarl_batch
from test_import_cfcql import write as write_h5
from test_import_madiff import smac_like as madiff_like
from test_import_madiff import write as write_npy

from macflow.data import Dataset, DatasetError, load, read_meta, save, schema
from macflow.data.collect import CollectOptions, collect, collect_and_save
from macflow.data.imports import ImportOptions, import_dataset
from macflow.data.io import combined_checksum
from macflow.envs.toys import Intensity, IntensityData, Xor, XorData
from macflow.files import Busy
from macflow.spec import EnvSpec
from macflow.trainers.qualities import QualityOptions, collect_quality

import builders
from test_cli import run

h5py = pytest.importorskip("h5py")


# --- helpers --------------------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from macflow.files import hold

    with hold(Path(sys.argv[1]), "the holder in test_data_faults"):
        print("held", flush=True)
        sys.stdin.readline()
    """
)


@contextmanager
def held(path):
    """Another process holds ``path``'s write lock for the body."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        yield
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def siblings(path):
    """Hidden siblings of ``path`` (temporary, staging and lock files)."""
    return sorted(p.name for p in path.parent.glob(f".{path.name}.*"))


def edit_meta(path, fn):
    meta = json.loads((path / "meta.json").read_text())
    fn(meta)
    (path / "meta.json").write_text(json.dumps(meta))


def rewrite_field(path, name, arr):
    """Replace a saved field's file, keeping meta.json's checksums consistent (a careful tool)."""
    np.save(path / f"{name}.npy", arr, allow_pickle=False)
    digest = hashlib.sha256((path / f"{name}.npy").read_bytes()).hexdigest()

    def fix(meta):
        meta["fields"][name]["sha256"] = digest
        sums = {k: v["sha256"] for k, v in meta["fields"].items()}
        meta["checksum"] = combined_checksum(sums)

    edit_meta(path, fix)


def cfcql_dir(root, bad=None):
    """A directory of two CFCQL files, a.h5 and b.h5; ``bad`` breaks b.h5 so that only its
    conversion (not its opening) finds it: an action its legal mask forbids."""
    root.mkdir(parents=True, exist_ok=True)
    write_h5(root / "a.h5", pymarl_batch(np.random.default_rng(0)))
    data = pymarl_batch(np.random.default_rng(1))
    if bad:
        act = data["actions"][5, 2, 1, 0]
        data["avail_actions"][5, 2, 1, act] = 0
        data["avail_actions"][5, 2, 1, (act + 1) % data["avail_actions"].shape[-1]] = 1
    write_h5(root / "b.h5", data)
    return root


# --- 1. numeric options are checked up front, naming the flag ------------------------------


@pytest.mark.parametrize(
    "change,flag",
    [
        ({"block_rows": -5}, "--block-rows"),
        ({"block_rows": 0}, "--block-rows"),
        ({"block_rows": 2.5}, "--block-rows"),
        ({"episode_limit": 0}, "--episode-limit"),
        ({"episode_limit": -1}, "--episode-limit"),
        ({"action_bound": 0.0}, "--action-bound"),
        ({"action_bound": math.nan}, "--action-bound"),
        ({"final": "dorp"}, "--final"),
    ],
)
def test_import_options_are_checked_up_front_naming_the_flag(change, flag):
    with pytest.raises(ValueError, match=f"^{flag} must be") as err:
        ImportOptions(**change)
    assert str(next(iter(change.values()))) in str(err.value)
    assert "\n" not in str(err.value)


def test_collect_and_quality_options_are_checked_up_front_naming_the_flag(tmp_path):
    from macflow.trainers.ppo import PPO

    out = tmp_path / "x"
    for change, flag in (
        ({"episodes": 0}, "--episodes"),
        ({"episodes": -3}, "--episodes"),
        ({"seed": -1}, "--seed"),
        ({"seed": 1 << 70}, "--seed"),
    ):
        with pytest.raises(ValueError, match=f"^{flag} must be"):
            CollectOptions(env=Xor(), behaviour=XorData(), out=out, **change)
    for change, flag in (
        ({"transitions": 0}, "--transitions"),
        ({"episodes": -1}, "--episodes"),
        ({"transitions": 10, "episodes": 10}, "--transitions and --episodes"),
        ({"seed": -2}, "--seed"),
    ):
        with pytest.raises(ValueError, match=f"^{flag}"):
            QualityOptions(env=Xor(), trainer=PPO(), out=out, quality="medium", **change)
    assert not out.exists()


def test_the_command_line_refuses_a_bad_block_size_before_writing(tmp_path):
    src = write_npy(tmp_path / "3m" / "good", madiff_like(np.random.default_rng(0)))
    out = tmp_path / "x"
    proc = run(
        "data", "import", "madiff", str(src), "--out", str(out), "--block-rows", "-5", ok=False
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: --block-rows must be an integer >= 1, got -5" in proc.stderr
    assert not out.exists() and not siblings(out)


# --- 2. one writer at a time; collect refuses before collecting -----------------------------


def test_a_second_writer_is_refused_while_another_process_writes(tmp_path):
    out = tmp_path / "ds"
    madiff = write_npy(tmp_path / "3m" / "good", madiff_like(np.random.default_rng(0)))
    several = cfcql_dir(tmp_path / "cfcql")
    writers = {
        "save": lambda: save(builders.dataset(True), out),
        "import": lambda: import_dataset("madiff", madiff, out, quiet=True),
        "import of several": lambda: import_dataset("cfcql", several, out, quiet=True),
        "collect": lambda: collect_and_save(
            CollectOptions(env=Xor(), behaviour=XorData(), out=out, episodes=5)
        ),
    }
    with held(out):
        for name, write in writers.items():
            with pytest.raises(Busy, match="being written by another process") as err:
                write()
            assert str(out) in str(err.value), name
            assert "the holder in test_data_faults" in str(err.value), name
            assert not out.exists(), name
    # Once the other process is done, a write succeeds; the overwrite rules still hold.
    save(builders.dataset(True), out)
    with pytest.raises(FileExistsError, match="already holds a dataset"):
        import_dataset("madiff", madiff, out, quiet=True)
    assert siblings(out) == []


def test_quality_collection_takes_the_lock_before_training(tmp_path):
    from macflow.trainers.ppo import PPO

    out = tmp_path / "q"
    # An unknown quality is refused by make_dataset, before any training; Busy comes first.
    options = QualityOptions(env=Xor(), trainer=PPO(), out=out, quality="superb")
    with held(out), pytest.raises(Busy, match="being written by another process"):
        collect_quality(options)
    assert not out.exists()


def test_collect_refuses_an_existing_dataset_before_collecting(tmp_path):
    out = tmp_path / "xor"
    save(builders.dataset(False), out)
    before = (out / "meta.json").read_text()
    text = io.StringIO()
    console = Console(file=text, force_terminal=True, width=100)
    options = CollectOptions(env=Xor(), behaviour=XorData(), out=out, episodes=50)
    with pytest.raises(FileExistsError) as err:
        collect_and_save(options, console=console)
    assert "collect toy/xor" not in text.getvalue()  # no collection was started
    assert "pass --overwrite (overwrite=True from Python) to replace it" in str(err.value)
    assert (out / "meta.json").read_text() == before


def test_overwrite_is_named_by_its_flag(tmp_path):
    save(builders.dataset(True), tmp_path / "d")
    with pytest.raises(FileExistsError) as err:
        save(builders.dataset(True), tmp_path / "d")
    assert str(err.value) == (
        f"{tmp_path / 'd'} already holds a dataset; pass --overwrite (overwrite=True from "
        "Python) to replace it"
    )


# --- 3. several datasets: all or nothing, names inside OUT -----------------------------------


def test_a_directory_of_files_is_imported_all_or_nothing(tmp_path):
    src = cfcql_dir(tmp_path / "cfcql", bad=True)
    out = tmp_path / "out"
    with pytest.raises(DatasetError) as err:
        import_dataset("cfcql", src, out, quiet=True)
    assert str(src / "b.h5") in str(err.value) and "forbidden by legal_actions" in str(err.value)
    assert not out.exists() and siblings(out) == []
    # The source fixed, the same command imports both (nothing left over blocks it).
    cfcql_dir(src)
    done = import_dataset("cfcql", src, out, quiet=True)
    assert [d.path for d in done] == [out / "a", out / "b"]
    assert load(out / "a").num_episodes == 4 and load(out / "b").num_episodes == 4
    assert siblings(out) == [] and sorted(p.name for p in out.iterdir()) == ["a", "b"]


def test_a_held_part_stops_the_whole_import(tmp_path):
    src = cfcql_dir(tmp_path / "cfcql")
    out = tmp_path / "out"
    with held(out / "b"), pytest.raises(Busy, match=str(out / "b")):
        import_dataset("cfcql", src, out, quiet=True)
    assert not (out / "a").exists() and siblings(out) == []


INTERRUPTED = textwrap.dedent(
    """
    import sys
    from macflow.data.imports import ImportOptions, import_dataset

    import_dataset("cfcql", sys.argv[1], sys.argv[2], ImportOptions(block_rows=6), quiet=True)
    """
)


@pytest.mark.slow  # timing-dependent: on a fast machine the import can finish before the signal
def test_ctrl_c_during_a_multi_file_import_leaves_nothing(tmp_path):
    src = tmp_path / "cfcql"
    src.mkdir()
    write_h5(src / "a.h5", pymarl_batch(np.random.default_rng(0)))
    big = pymarl_batch(np.random.default_rng(1))
    write_h5(src / "b.h5", {k: np.tile(v, (3000,) + (1,) * (v.ndim - 1)) for k, v in big.items()})
    out = tmp_path / "out"
    child = subprocess.Popen([sys.executable, "-c", INTERRUPTED, str(src), str(out)])
    deadline = time.monotonic() + 120

    def first_done():  # a.h5 converted (staged, or before the fix in place), b.h5 under way
        return list(tmp_path.glob(".out.stage-*/a/meta.json")) or (out / "a" / "meta.json").exists()

    while not first_done() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert child.poll() is None, "the import should still be converting b.h5"
    os.kill(child.pid, signal.SIGINT)
    assert child.wait(timeout=60) != 0
    assert not out.exists() and siblings(out) == []


@pytest.mark.parametrize(
    "files,words",
    [
        (("..h5", "a.h5"), "named '.'"),  # the stem '.': the first dataset would be OUT itself
        (("...h5", "a.h5"), "named '..'"),  # the stem '..': it would go beside OUT
        (("a.h5", "a.hdf5"), "2 datasets named 'a'"),
    ],
)
def test_dataset_names_must_stay_inside_out(tmp_path, files, words):
    src = tmp_path / "cfcql"
    src.mkdir()
    for i, name in enumerate(files):
        write_h5(src / name, pymarl_batch(np.random.default_rng(i)))
    out = tmp_path / "box" / "out"
    with pytest.raises(DatasetError, match=words) as err:
        import_dataset("cfcql", src, out, quiet=True)
    assert str(err.value).startswith(str(src))
    assert not (tmp_path / "box").exists() or list((tmp_path / "box").iterdir()) == []


# --- 4. metadata of the wrong type: a DatasetError naming the file and the field -------------


def _set(*keys, value):
    def edit(meta):
        d = meta
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value

    return edit


@pytest.mark.parametrize(
    "edit,field",
    [
        (_set("fields", value="x"), "fields"),
        (_set("fields", "rewards", value=[1, 2]), "fields.rewards"),
        (_set("fields", "rewards", "shape", value="big"), "fields.rewards.shape"),
        (_set("fields", "rewards", "shape", value=[10.5]), "fields.rewards.shape"),
        (_set("fields", "rewards", "dtype", value=4), "fields.rewards.dtype"),
        (_set("fields", "rewards", "sha256", value=None), "fields.rewards.sha256"),
        (_set("env", value="toy"), "env"),
        (_set("env", "spec", value=3), "env.spec"),
        (_set("env", "spec", "num_agents", value="two"), "env.spec.num_agents"),
        (_set("env", "spec", "discrete", value="yes"), "env.spec.discrete"),
        (_set("env", "spec", "state_is_obs_concat", value=1), "env.spec.state_is_obs_concat"),
        (_set("env", "spec", "env_id", value=7), "env.spec.env_id"),
        (_set("reference_returns", value=["random", "expert"]), "reference_returns"),
        (_set("reference_returns", value="x"), "reference_returns"),
        (_set("quality", value=5), "quality"),
        (_set("checksum", value=5), "checksum"),
        (_set("stats", value=[]), "stats"),
    ],
)
def test_metadata_of_the_wrong_type_names_the_file_and_field(tmp_ds, edit, field):
    save(builders.dataset(True), tmp_ds)
    edit_meta(tmp_ds, edit)
    for read in (read_meta, load):
        with pytest.raises(DatasetError) as err:
            read(tmp_ds)
        assert err.value.file == str(tmp_ds / "meta.json") and err.value.field == field
        assert str(err.value).startswith(f"{tmp_ds / 'meta.json'}: field '{field}'")


def test_continuous_bounds_must_be_numbers(tmp_ds):
    save(builders.dataset(False), tmp_ds)
    edit_meta(tmp_ds, _set("env", "spec", "action_low", value="ab"))
    with pytest.raises(DatasetError, match="env.spec.action_low.*a list of numbers"):
        load(tmp_ds)


def _symlink_loop(file):
    file.unlink()
    os.symlink(file.name, file)


def _directory(file):
    file.unlink()
    file.mkdir()


@pytest.mark.parametrize(
    "name,damage",
    [
        ("meta.json", _directory),
        ("meta.json", _symlink_loop),
        ("meta.json", lambda f: f.write_bytes(b"\xff\xfe{}")),
        ("rewards.npy", _directory),
        ("rewards.npy", _symlink_loop),
        ("rewards.npy", lambda f: f.write_bytes(b"")),
    ],
    ids=["meta-dir", "meta-loop", "meta-not-utf8", "field-dir", "field-loop", "field-empty"],
)
@pytest.mark.parametrize("verify", [True, False])
def test_unreadable_files_name_the_file(tmp_ds, name, damage, verify):
    save(builders.dataset(True), tmp_ds)
    damage(tmp_ds / name)
    with pytest.raises(DatasetError) as err:
        load(tmp_ds, verify=verify)
    assert err.value.file == str(tmp_ds / name)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
@pytest.mark.parametrize("name", ["meta.json", "rewards.npy"])
def test_files_without_read_permission_name_the_file(tmp_ds, name):
    save(builders.dataset(True), tmp_ds)
    (tmp_ds / name).chmod(0)
    with pytest.raises(DatasetError, match="cannot be read") as err:
        load(tmp_ds)
    assert err.value.file == str(tmp_ds / name)


@pytest.fixture(scope="module")
def vault(tmp_path_factory):
    pytest.importorskip("flashbax")
    from vaults import smac_like, write_vault

    root = tmp_path_factory.mktemp("vault")
    write_vault(root, "3m.vlt", "Good", smac_like(np.random.default_rng(0), batch=1, steps=30))
    return root / "3m.vlt" / "Good"


def _meta(edit):
    def damage(file):
        meta = json.loads(file.read_text())
        edit(meta)
        file.write_text(json.dumps(meta))

    return damage


@pytest.mark.parametrize(
    "damage,field,words",
    [
        (lambda f: f.write_bytes(b"\xff\xfe\x00"), None, "not UTF-8"),
        (lambda f: f.write_text("[1]"), None, "must hold a JSON object"),
        (lambda f: f.write_text("{"), None, "not valid JSON"),
        (_meta(lambda m: m.update(structure_shape="x")), "structure_shape", "must be an object"),
        (_meta(lambda m: m.pop("structure_dtype")), "structure_dtype", "missing"),
        (
            _meta(lambda m: m["structure_shape"].update(rewards="(1, x)")),
            "structure_shape",
            "'rewards.'",
        ),
        (
            _meta(lambda m: m["structure_shape"].update(rewards="(1,)")),
            "structure_shape",
            r"\(B, T",
        ),
        (
            _meta(lambda m: m["structure_dtype"].update(rewards="nonsense")),
            "structure_dtype",
            "not a numpy dtype",
        ),
        (_meta(lambda m: m["structure_dtype"].pop("rewards")), "structure_dtype", "'rewards.'"),
        (_meta(lambda m: m.update(version=[1])), "version", "reads 1.x"),
    ],
)
def test_vault_metadata_of_the_wrong_type_names_the_file(vault, tmp_path, damage, field, words):
    uid = tmp_path / "3m.vlt" / "Good"
    shutil.copytree(vault, uid)
    damage(uid / "metadata.json")
    with pytest.raises(DatasetError, match=words) as err:
        import_dataset("og-marl", uid, tmp_path / "x", quiet=True)
    assert err.value.file == str(uid / "metadata.json") and err.value.field == field
    assert not (tmp_path / "x").exists()


# --- 5. what meta.json records, the state concatenation, MADiff's optional files -------------


@pytest.mark.parametrize("key,value,got", [("shape", [7], "[10]"), ("dtype", "int8", "float32")])
def test_the_recorded_shape_and_dtype_must_match_the_files(tmp_ds, key, value, got):
    save(builders.dataset(True), tmp_ds)
    edit_meta(tmp_ds, _set("fields", "rewards", key, value=value))
    for kwargs in ({}, {"verify": False, "check_values": False}):
        with pytest.raises(DatasetError) as err:
            load(tmp_ds, **kwargs)
        assert err.value.file == str(tmp_ds / "rewards.npy") and err.value.field == "rewards"
        message = str(err.value)
        assert f"holds {key} {got}" in message and f"fields.rewards.{key} {value}" in message


def concat_dataset() -> Dataset:
    """builders' episodes with a spec whose state is the concatenated observations."""
    a = builders.arrays(True)
    a["states"] = a["observations"].reshape(len(a["states"]), -1).copy()
    a["final_states"] = a["final_observations"].reshape(len(a["final_states"]), -1).copy()
    n, o = builders.N, builders.O
    spec = EnvSpec("test/concat", n, o, n * o, builders.A, True, 4, state_is_obs_concat=True)
    return Dataset(arrays=a, spec=spec, provenance={"method": "test"})


@pytest.mark.parametrize("name,index", [("states", (7, 4)), ("final_states", (2, 1))])
def test_a_state_said_to_be_the_observations_must_be_them(tmp_ds, monkeypatch, name, index):
    monkeypatch.setattr(schema, "CHUNK_ROWS", 3)  # checked in blocks: the index counts them
    good = concat_dataset()
    save(good, tmp_ds)
    assert load(tmp_ds).num_transitions == 10
    bad = {k: np.array(v) for k, v in good.arrays.items()}
    bad[name][index] += 1.0
    other = tmp_ds.parent / "other"
    with pytest.raises(DatasetError) as err:  # refused on save, nothing written
        save(Dataset(arrays=bad, spec=good.spec, provenance={"method": "test"}), other)
    assert err.value.field == name and err.value.index == index
    assert "state_is_obs_concat" in str(err.value) and not other.exists()
    rewrite_field(tmp_ds, name, bad[name])  # and on load, naming the file
    with pytest.raises(DatasetError, match="not the concatenated observations") as err:
        load(tmp_ds)
    assert err.value.file == str(tmp_ds / f"{name}.npy") and err.value.index == index


@pytest.mark.parametrize("name", ["legals", "states"])
def test_a_madiff_file_that_is_a_directory_is_refused(tmp_path, name):
    src = write_npy(tmp_path / "3m" / "good", madiff_like(np.random.default_rng(0)))
    (src / f"{name}.npy").unlink()
    (src / f"{name}.npy").mkdir()
    out = tmp_path / "x"
    with pytest.raises(DatasetError, match="is a directory") as err:
        import_dataset("madiff", src, out, quiet=True)
    assert err.value.file == str(src / f"{name}.npy") and err.value.field == name
    assert not out.exists() and siblings(out) == []


# --- 6. env.kwargs the task does not accept ------------------------------------------------


def test_env_kwargs_the_task_does_not_accept_are_refused(tmp_path):
    ds = collect(Intensity(), IntensityData(), 4)
    path = tmp_path / "ds"
    save(ds, path)
    edit_meta(path, _set("env", "kwargs", value={"zeta": 0.5, "speed": 3}))
    with pytest.raises(DatasetError) as err:
        load(path)
    assert err.value.file == str(path / "meta.json") and err.value.field == "env.kwargs"
    assert "['speed']" in str(err.value) and "['zeta']" in str(err.value)
    # Refused on save too; a task macflow does not know keeps whatever kwargs it records.
    bad = Dataset(ds.arrays, ds.spec, provenance={"method": "test"}, env_kwargs={"speed": 3})
    with pytest.raises(DatasetError, match="speed"):
        save(bad, tmp_path / "other")
    assert not (tmp_path / "other").exists()
    assert load(save(builders.dataset(True), tmp_path / "hand").path).env_kwargs == {"size": 1}
    info = run("data", "info", str(path), "--no-plot", ok=False)
    assert info.returncode == 2 and "Traceback" not in info.stderr
    assert f"error: {path / 'meta.json'}: field 'env.kwargs': ['speed']" in info.stderr
