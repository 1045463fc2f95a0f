"""OMIGA MA-MuJoCo import: small files written with the real h5py in OMIGA's layout."""

import numpy as np
import pytest

from macflow.data import DatasetError, load
from macflow.data.imports import ImportOptions, import_dataset

h5py = pytest.importorskip("h5py")
# Sniffed with the format modules themselves: detect() also loads the other formats' modules.
from macflow.data.imports import cfcql, omiga  # noqa: E402

T, N = 20, 2
ENDS, TERMINAL = [2, 7, 12, 13, 18], [True, True, False, True, False]  # with episode_limit 5


def write(path, **data):
    with h5py.File(path, "w") as f:
        for key, value in data.items():
            f.create_dataset(key, data=value)
    return path


def omiga_like(rng, rows=T, n=N, feats=3, id_first=True):
    """OMIGA's layout: obs with a one-hot agent id, s = o, a (T, N, 1), r and d (T, 1)."""
    eye = np.broadcast_to(np.eye(n, dtype=np.float32), (rows, n, n))
    x = rng.normal(size=(rows, n, feats)).astype(np.float32)
    o = np.concatenate([eye, x] if id_first else [x, eye], axis=-1)
    d = np.zeros((rows, 1), np.float32)
    # Terminals at 2, at 7 (the 5th row: a terminal at the limit) and at 13: rows 8..12 reach the
    # time limit 5 first, so 13 is a 1-step episode; 14..18 reach the limit; 19 is unfinished.
    d[[2, 7, 13]] = 1.0
    return {
        "s": o.copy(),
        "o": o,
        "a": rng.uniform(-1, 1, (rows, n, 1)).astype(np.float32),
        "r": rng.normal(size=(rows, 1)).astype(np.float32),
        "d": d,
    }


def test_episodes_are_cut_at_terminals_and_the_time_limit(tmp_path):
    data = omiga_like(np.random.default_rng(0))
    file = write(tmp_path / "Ant-v2-2x4-expert.hdf5", **data)
    assert omiga.looks_like(file) and omiga.looks_like(tmp_path) and not cfcql.looks_like(file)
    # D4RL's reading of d; OMIGA's own is the default (next test).
    opts = ImportOptions(episode_limit=5, block_rows=6, omiga_done="last-step")
    (ds,) = import_dataset("omiga", file, tmp_path / "out", opts, quiet=True)
    ds = load(tmp_path / "out")  # validated, checksums verified
    kept = 19
    np.testing.assert_array_equal(ds.ends, ENDS)
    np.testing.assert_array_equal(ds.arrays["terminals"][ENDS], TERMINAL)
    np.testing.assert_array_equal(ds.arrays["truncations"][ENDS], np.logical_not(TERMINAL))
    assert ds.arrays["terminals"].sum() == 3 and ds.arrays["truncations"].sum() == 2
    np.testing.assert_array_equal(ds.arrays["observations"], data["o"][:kept])
    np.testing.assert_array_equal(ds.arrays["actions"], data["a"][:kept])  # A = 1 is kept
    np.testing.assert_array_equal(ds.arrays["rewards"], data["r"][:kept, 0])
    # s = o: the agents' states differ (each holds its own id), so they are concatenated,
    # which is exactly the concatenation of the observations.
    np.testing.assert_array_equal(ds.arrays["states"], data["o"][:kept].reshape(kept, -1))
    # No next observation in the file: --final repeat copies each episode's last one.
    np.testing.assert_array_equal(ds.arrays["final_observations"], data["o"][ENDS])
    np.testing.assert_array_equal(ds.arrays["final_states"], data["o"][ENDS].reshape(5, -1))
    spec = ds.spec
    assert spec.env_id == "omiga:Ant-v2-2x4" and ds.quality == "expert"
    assert (spec.num_agents, spec.obs_dim, spec.state_dim, spec.action_dim) == (2, 5, 10, 1)
    assert not spec.discrete and spec.episode_limit == 5 and spec.state_is_obs_concat
    assert spec.action_low == (-1.0,) and spec.action_high == (1.0,)
    prov = ds.provenance
    assert prov["format"] == "omiga"
    assert prov["omiga"]["rows"] == T and prov["omiga"]["rows_kept"] == kept
    assert prov["omiga"]["terminal_episodes"] == 3 and prov["omiga"]["truncated_episodes"] == 2
    assert "truncation after 5 rows" in prov["omiga"]["episode_rule"]
    notes = " ".join(prov["transformations"])
    for words in (
        "d[t, 0] != 0",
        "3 terminal and 2 truncated episodes",
        "dropped 1 rows after the last episode end",
        "one-hot agent id at dims [0, 2), kept",
        "s: equals o",
        "concatenated into [T, N*S]",
        "state_is_obs_concat",
        "--final repeat",
    ):
        assert words in notes, notes

    # The default time limit is MuJoCo's 1000 steps: here only the two terminals end episodes.
    default = ImportOptions(omiga_done="last-step")
    (ds,) = import_dataset("omiga", file, tmp_path / "default", default, quiet=True)
    np.testing.assert_array_equal(ds.ends, [2, 7, 13])
    assert ds.arrays["terminals"][[2, 7, 13]].all() and not ds.arrays["truncations"].any()
    assert ds.spec.episode_limit == 1000
    assert "dropped 6 rows" in " ".join(ds.provenance["transformations"])


def test_directory_global_state_stripped_id_summed_rewards_and_final_drop(tmp_path):
    rng = np.random.default_rng(1)
    n, rows = 3, 16
    hop = omiga_like(rng, rows=rows, n=n, feats=4, id_first=False)
    hop["s"] = np.repeat(rng.normal(size=(rows, 1, 6)).astype(np.float32), n, axis=1)
    hop["r"] = rng.normal(size=(rows, n)).astype(np.float32)  # per-agent rewards
    hop["d"] = np.zeros(rows, np.float32)  # (T,) flags are accepted too
    hop["d"][3] = 1.0  # episodes 0..3 (terminal), 4..8 and 9..13 (time limit); 14, 15 unfinished
    write(tmp_path / "Hopper-v2-3x1-medium-replay.hdf5", **hop)
    write(tmp_path / "Ant-v2-2x4-expert.hdf5", **omiga_like(rng))
    opts = ImportOptions(
        episode_limit=5,
        strip_agent_id=True,
        team_reward="sum",
        final="drop",
        block_rows=7,
        omiga_done="last-step",
    )
    done = import_dataset("omiga", tmp_path, tmp_path / "out", opts, quiet=True)
    assert sorted(d.path.name for d in done) == ["Ant-v2-2x4-expert", "Hopper-v2-3x1-medium-replay"]
    ds = load(tmp_path / "out" / "Hopper-v2-3x1-medium-replay")
    assert ds.spec.env_id == "omiga:Hopper-v2-3x1" and ds.quality == "medium-replay"
    # --final drop: each truncated episode's last row (8, 13) becomes the final observation.
    rows_kept = [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12]
    np.testing.assert_array_equal(ds.arrays["observations"], hop["o"][rows_kept, :, :4])
    np.testing.assert_array_equal(ds.arrays["final_observations"], hop["o"][[3, 8, 13], :, :4])
    np.testing.assert_array_equal(ds.arrays["states"], hop["s"][rows_kept, 0])
    np.testing.assert_array_equal(ds.arrays["final_states"], hop["s"][[3, 8, 13], 0])
    np.testing.assert_allclose(ds.arrays["rewards"], hop["r"][rows_kept].sum(1), rtol=1e-6)
    np.testing.assert_array_equal(ds.ends, [3, 7, 11])
    np.testing.assert_array_equal(ds.arrays["terminals"][[3, 7, 11]], [True, False, False])
    assert ds.spec.obs_dim == 4 and ds.spec.state_dim == 6 and not ds.spec.state_is_obs_concat
    notes = " ".join(ds.provenance["transformations"])
    for words in (
        "agent id at dims [4, 7), removed",
        "agent 0's copy is the state",
        "sum over agents",
        "--final drop",
        "1 terminal and 2 truncated",
    ):
        assert words in notes, notes
    assert "state_is_obs_concat" not in notes


def test_omigas_own_reading_makes_a_done_row_the_exact_terminal_observation(tmp_path):
    data = omiga_like(np.random.default_rng(3))
    data["d"][8] = 1.0  # right after the terminal row 7: a terminal observation with no step
    file = write(tmp_path / "Ant-v2-2x4-expert.hdf5", **data)
    opts = ImportOptions(episode_limit=5, block_rows=6)
    (ds,) = import_dataset("omiga", file, tmp_path / "out", opts, quiet=True)
    # Steps 0-1 (terminal observation 2), 3-6 (7), 9-12 (13), 14-18 (time limit); 8 skipped.
    steps = [0, 1, 3, 4, 5, 6, 9, 10, 11, 12, 14, 15, 16, 17, 18]
    np.testing.assert_array_equal(ds.arrays["observations"], data["o"][steps])
    np.testing.assert_array_equal(ds.arrays["actions"], data["a"][steps])
    np.testing.assert_array_equal(ds.arrays["rewards"], data["r"][steps, 0])
    np.testing.assert_array_equal(ds.ends, [1, 5, 9, 14])
    np.testing.assert_array_equal(ds.arrays["terminals"][ds.ends], [True, True, True, False])
    np.testing.assert_array_equal(ds.arrays["truncations"][ds.ends], [False, False, False, True])
    # The d = 1 rows are the exact final observations; the truncated episode repeats its last.
    np.testing.assert_array_equal(ds.arrays["final_observations"], data["o"][[2, 7, 13, 18]])
    prov = ds.provenance["omiga"]
    assert prov["terminal_observation_rows"] == 3 and prov["skipped_done_rows"] == 1
    notes = " ".join(ds.provenance["transformations"])
    assert "terminal observation reached by the step before" in notes
    assert "skipped 1 rows with d != 0" in notes and "dropped 1 rows" in notes
    # An action out of bounds on a step is reported at the file's row.
    data["a"][10, 0, 0] = -3.0
    bad = write(tmp_path / "bad.hdf5", **data)
    with pytest.raises(DatasetError) as err:
        import_dataset("omiga", bad, tmp_path / "x", opts, quiet=True)
    assert str(err.value).startswith(f"{bad}: field 'a' at index (10, 0, 0): value -3.0")


def test_malformed_files_name_the_file_field_and_index(tmp_path):
    rng = np.random.default_rng(2)
    opts = ImportOptions(episode_limit=5, block_rows=6)

    bad = omiga_like(rng)
    bad["a"] = bad["a"][:-1]
    file = write(tmp_path / "short-a.hdf5", **bad)
    with pytest.raises(DatasetError) as err:
        import_dataset("omiga", file, tmp_path / "x", opts, quiet=True)
    assert str(err.value).startswith(f"{file}: field 'a': shape (19, 2, 1)")
    assert "T=20 rows" in str(err.value)

    bad = omiga_like(rng)
    del bad["r"]
    file = write(tmp_path / "no-r.hdf5", **bad)
    assert not omiga.looks_like(file)
    with pytest.raises(DatasetError, match=f"{file}: field 'r': missing"):
        import_dataset("omiga", file, tmp_path / "x", opts, quiet=True)

    # An action out of [-1, 1]: reported at the file's (row, agent, dim) of 'a'.
    bad = omiga_like(rng)
    bad["a"][9, 1, 0] = 1.5
    file = write(tmp_path / "big-a.hdf5", **bad)
    with pytest.raises(DatasetError) as err:
        import_dataset("omiga", file, tmp_path / "x", opts, quiet=True)
    assert str(err.value).startswith(f"{file}: field 'a' at index (9, 1, 0): value 1.5")
    assert not (tmp_path / "x").exists()

    # The state equals the observations on the first rows, but a later block departs from it.
    bad = omiga_like(rng)
    bad["s"][14, 1, 3] += 1.0
    file = write(tmp_path / "state.hdf5", **bad)
    with pytest.raises(DatasetError) as err:
        import_dataset("omiga", file, tmp_path / "x", opts, quiet=True)
    assert str(err.value).startswith(f"{file}: field 's' at index (14, 1, 3)")

    bad = omiga_like(rng)
    bad["o"][:, :, :2] = 0.5  # no one-hot agent id
    file = write(tmp_path / "noid.hdf5", **bad)
    strip = ImportOptions(episode_limit=5, strip_agent_id=True)
    with pytest.raises(
        DatasetError, match=f"{file}: field 'o': --strip-agent-id: no one-hot agent id"
    ):
        import_dataset("omiga", file, tmp_path / "x", strip, quiet=True)

    bad = omiga_like(rng)
    bad["d"][:] = 0.0
    file = write(tmp_path / "nodone.hdf5", **bad)
    with pytest.raises(DatasetError, match=f"{file}: field 'd': no complete episode"):
        import_dataset("omiga", file, tmp_path / "x", quiet=True)

    (tmp_path / "text.hdf5").write_text("not hdf5")
    assert not omiga.looks_like(tmp_path / "text.hdf5")
