"""The on-disk format: round trips, plain files any tool reads, a clear error per bad input."""

import hashlib
import json

import numpy as np
import pytest

from macflow.data import SCHEMA_VERSION, Dataset, DatasetError, load, read_meta, save
from macflow.data.io import combined_checksum

import builders


@pytest.mark.parametrize("discrete", [True, False])
def test_round_trip_keeps_arrays_and_metadata(tmp_ds, discrete):
    ds = builders.dataset(discrete)
    saved = save(ds, tmp_ds)
    back = load(tmp_ds)
    assert set(back.arrays) == set(ds.arrays)
    for name, arr in ds.arrays.items():
        np.testing.assert_array_equal(back.arrays[name], arr)
        assert back.arrays[name].dtype == arr.dtype
    assert back.spec == ds.spec
    assert back.quality == "hand-built"
    assert back.provenance == {"method": "test", "seed": 0}
    assert back.env_kwargs == {"size": 1}
    assert back.reference_returns == {"random": 0.0, "expert": 2.0}
    assert back.checksum == saved.checksum and back.checksum.startswith("sha256:")
    assert back.stats() == ds.stats()
    assert back.stats()["episodes"] == 4 and back.stats()["transitions"] == 10
    np.testing.assert_allclose(back.episode_returns, [0.3, 0.3, 2.2, 1.7], rtol=1e-6)


def test_files_are_plain_npy_and_json_with_sha256_per_file(tmp_ds):
    save(builders.dataset(True), tmp_ds)
    meta = json.loads((tmp_ds / "meta.json").read_text())
    assert meta["format"] == "macflow-dataset" and meta["schema_version"] == SCHEMA_VERSION
    assert meta["env"]["spec"]["num_agents"] == builders.N
    sums = {}
    for name, field in meta["fields"].items():
        raw = (tmp_ds / f"{name}.npy").read_bytes()
        sums[name] = hashlib.sha256(raw).hexdigest()
        assert field["sha256"] == sums[name]  # `sha256sum observations.npy` agrees
        arr = np.load(tmp_ds / f"{name}.npy")
        assert list(arr.shape) == field["shape"] and arr.dtype.name == field["dtype"]
    assert meta["checksum"] == combined_checksum(sums)
    assert meta["stats"]["return_max"] == pytest.approx(2.2)


def test_checksum_depends_on_content_only(tmp_path):
    a = save(builders.dataset(True), tmp_path / "a")
    b = save(builders.dataset(True), tmp_path / "b")
    assert a.checksum == b.checksum
    changed = builders.arrays(True)
    changed["rewards"][0] += 1
    c = save(Dataset(arrays=changed, spec=builders.spec(True)), tmp_path / "c")
    assert c.checksum != a.checksum


def test_overwrite_rules(tmp_path):
    ds = builders.dataset(False)
    save(ds, tmp_path / "d")
    with pytest.raises(FileExistsError, match="already holds a dataset"):
        save(ds, tmp_path / "d")
    save(ds, tmp_path / "d", overwrite=True)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not a macflow dataset"):
        save(ds, other, overwrite=True)
    assert (other / "thesis.txt").read_text() == "precious"
    (tmp_path / "empty").mkdir()
    save(ds, tmp_path / "empty")
    assert load(tmp_path / "empty").num_transitions == 10


# --- bad input: (mutation of the arrays, field named, first index, words in the message) ------


def _set(name, index, value):
    def mutate(a):
        a[name][index] = value

    return mutate


def _replace(name, fn):
    def mutate(a):
        a[name] = fn(a[name])

    return mutate


def _delete(name):
    def mutate(a):
        del a[name]

    return mutate


def _unend_last(a):
    a["terminals"][-1] = False
    a["final_observations"] = a["final_observations"][:-1]
    a["final_states"] = a["final_states"][:-1]
    if "final_legal_actions" in a:
        a["final_legal_actions"] = a["final_legal_actions"][:-1]


def _merge_episodes(a):
    # Episode 2 covers steps 4..7; removing its end merges it with episode 3 (steps 4..9).
    a["truncations"][7] = False


def _add_bonus(a):
    a["bonus"] = np.zeros(3, np.float32)


def _no_legal(a):
    a["legal_actions"][6, 1, :] = False


def _illegal(a):
    # Step 2 of agent 0 allows {0, 2}; action 1 is forbidden.
    a["actions"][2, 0] = 1


NAN, INF = np.float32(np.nan), np.float32(np.inf)
CASES = {
    "missing field": (None, _delete("states"), "states", None, "missing"),
    "extra field": (None, _add_bonus, "bonus", None, "unexpected field"),
    "wrong shape": (
        None,
        _replace("observations", lambda x: np.ascontiguousarray(x[:, :1])),
        "observations",
        None,
        "first mismatch on axis 1",
    ),
    "wrong dtype": (
        None,
        _replace("observations", lambda x: x.astype(np.float64)),
        "observations",
        None,
        "dtype is float64, expected float32",
    ),
    "nan": (None, _set("observations", (5, 1, 2), NAN), "observations", (5, 1, 2), "not finite"),
    "inf": (None, _set("rewards", 7, INF), "rewards", (7,), "not finite"),
    "final nan": (None, _set("final_states", (3, 2), NAN), "final_states", (3, 2), "not finite"),
    "out of bounds": (
        False,
        _set("actions", (4, 1, 1), np.float32(2.5)),
        "actions",
        (4, 1, 1),
        "outside the action bounds [-2.0, 2.0]",
    ),
    "action out of range": (True, _set("actions", (3, 1), 7), "actions", (3, 1), "not in [0, 3)"),
    "illegal action": (True, _illegal, "actions", (2, 0), "forbidden by legal_actions"),
    "no legal action": (True, _no_legal, "legal_actions", (6, 1), "no legal action"),
    "terminal and truncation": (
        None,
        _set("truncations", 2, True),
        "truncations",
        (2,),
        "both set",
    ),
    "unfinished last episode": (None, _unend_last, "terminals", (9,), "does not end an episode"),
    "episode over the limit": (
        None,
        _merge_episodes,
        "terminals",
        (7,),
        "longer than the episode limit 4",
    ),
    "finals do not match episodes": (
        None,
        _replace("final_observations", lambda x: np.concatenate([x, x[:1]])),
        "final_observations",
        None,
        "E = number of episodes",
    ),
}


def _cases():
    for name, (only, *rest) in CASES.items():
        for discrete in (True, False):
            if only is None or only == discrete:
                yield pytest.param(discrete, *rest, id=f"{name}-{'disc' if discrete else 'cont'}")


def _check(err: DatasetError, path, field, index, words):
    assert err.field == field
    assert err.file == str(path / f"{field}.npy")
    assert str(path / f"{field}.npy") in str(err) and f"'{field}'" in str(err)
    assert err.index == index
    assert words in str(err)


@pytest.mark.parametrize("discrete,mutate,field,index,words", list(_cases()))
def test_bad_arrays_are_refused_on_save_and_nothing_is_written(
    tmp_ds, discrete, mutate, field, index, words
):
    arrays = builders.arrays(discrete)
    mutate(arrays)
    with pytest.raises(DatasetError) as info:
        save(Dataset(arrays=arrays, spec=builders.spec(discrete)), tmp_ds)
    _check(info.value, tmp_ds, field, index, words)
    assert not tmp_ds.exists() and not list(tmp_ds.parent.glob(".ds*"))


def _tamper(path, arrays):
    """Rewrite a saved dataset's arrays with consistent checksums, as a careless tool might."""
    meta = json.loads((path / "meta.json").read_text())
    for f in path.glob("*.npy"):
        f.unlink()
    for name, arr in arrays.items():
        np.save(path / f"{name}.npy", arr, allow_pickle=False)
        digest = hashlib.sha256((path / f"{name}.npy").read_bytes()).hexdigest()
        meta["fields"].setdefault(name, {})["sha256"] = digest
    for name in set(meta["fields"]) - set(arrays):
        del meta["fields"][name]
    meta["checksum"] = combined_checksum({k: v["sha256"] for k, v in meta["fields"].items()})
    (path / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("discrete,mutate,field,index,words", list(_cases()))
def test_bad_arrays_on_disk_are_refused_on_load(tmp_ds, discrete, mutate, field, index, words):
    save(builders.dataset(discrete), tmp_ds)
    arrays = builders.arrays(discrete)
    mutate(arrays)
    _tamper(tmp_ds, arrays)
    with pytest.raises(DatasetError) as info:
        load(tmp_ds)
    _check(info.value, tmp_ds, field, index, words)


def _edit_meta(path, fn):
    meta = json.loads((path / "meta.json").read_text())
    fn(meta)
    (path / "meta.json").write_text(json.dumps(meta))


def test_checksum_mismatch_names_the_file(tmp_ds):
    save(builders.dataset(True), tmp_ds)
    f = tmp_ds / "observations.npy"
    raw = bytearray(f.read_bytes())
    raw[-4] ^= 0x01  # the lowest mantissa bit of the last observation value
    f.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="checksum mismatch") as info:
        load(tmp_ds)
    assert info.value.file == str(f) and info.value.field == "observations"
    # verify=False skips hashing only; the still-valid array loads with its changed value.
    changed = load(tmp_ds, verify=False).arrays["observations"][-1, -1, -1]
    assert changed != builders.arrays(True)["observations"][-1, -1, -1]


def test_newer_schema_version_is_refused(tmp_ds):
    save(builders.dataset(False), tmp_ds)
    _edit_meta(tmp_ds, lambda m: m.update(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(DatasetError, match="newer than this macflow") as info:
        load(tmp_ds)
    assert info.value.file == str(tmp_ds / "meta.json") and info.value.field == "schema_version"


@pytest.mark.parametrize(
    "edit,field,words",
    [
        (lambda m: m.pop("quality"), "quality", "missing"),
        (lambda m: m.update(colour="blue"), "colour", "unexpected key"),
        (lambda m: m.update(format="zarr"), "format", "expected 'macflow-dataset'"),
        (lambda m: m["env"]["spec"].pop("obs_dim"), "env.spec", "missing key(s) ['obs_dim']"),
        (lambda m: m["provenance"].pop("method"), "provenance.method", "how the data were made"),
        (lambda m: m["stats"].update(return_max=99.0), "stats.return_max", "arrays give"),
        (lambda m: m.update(checksum="sha256:0"), "checksum", "the fields give"),
        (
            lambda m: m.update(reference_returns={"random": 1.0}),
            "reference_returns",
            "random and expert",
        ),
    ],
)
def test_bad_metadata_is_refused(tmp_ds, edit, field, words):
    save(builders.dataset(True), tmp_ds)
    _edit_meta(tmp_ds, edit)
    with pytest.raises(DatasetError) as info:
        load(tmp_ds)
    assert info.value.file == str(tmp_ds / "meta.json")
    assert info.value.field == field and words in str(info.value)


def test_unreadable_meta_and_missing_dataset(tmp_ds, tmp_path):
    with pytest.raises(DatasetError, match="no dataset here"):
        load(tmp_path / "nowhere")
    save(builders.dataset(True), tmp_ds)
    (tmp_ds / "meta.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON") as info:
        read_meta(tmp_ds)
    assert info.value.file == str(tmp_ds / "meta.json")
    (tmp_ds / "meta.json").unlink()
    with pytest.raises(DatasetError, match="not a macflow dataset"):
        load(tmp_ds)
