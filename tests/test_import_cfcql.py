"""CFCQL SMAC import: small pymarl EpisodeBatch files written with the real h5py."""

import numpy as np
import pytest

from macflow.data import DatasetError, load
from macflow.data.imports import ImportOptions, import_dataset

h5py = pytest.importorskip("h5py")
# Sniffed with the format modules themselves: detect() also loads the other formats' modules.
from macflow.data.imports import cfcql, omiga  # noqa: E402

L, N, OBS, S, A = 6, 2, 4, 5, 4
# (filled rows F, first terminated row or None): terminal with its final row, terminal without
# one, two episodes without a transition, a truncation (time limit), and a full terminal episode.
EPISODES = [(4, 2), (3, 2), (0, None), (1, None), (6, None), (6, 4)]
KEPT = [0, 1, 4, 5]
STEPS = {0: 3, 1: 3, 4: 5, 5: 5}  # transitions of each kept episode
TERMINAL = [True, True, False, True]


def pymarl_batch(rng, episodes=EPISODES, n=N):
    """EpisodeBatch arrays as CFCQL's collect_sequential writes them (zero padding)."""
    e = len(episodes)
    out = {
        "state": np.zeros((e, L, S), np.float32),
        "obs": np.zeros((e, L, n, OBS), np.float32),
        "actions": np.zeros((e, L, n, 1), np.int64),
        "avail_actions": np.zeros((e, L, n, A), np.int32),
        "probs": np.zeros((e, L, n, A), np.float32),
        "reward": np.zeros((e, L, 1), np.float32),
        "terminated": np.zeros((e, L, 1), np.uint8),
        "filled": np.zeros((e, L, 1), np.int64),
    }
    for i, (f, k) in enumerate(episodes):
        out["filled"][i, :f] = 1
        out["state"][i, :f] = rng.normal(size=(f, S))
        out["obs"][i, :f] = rng.normal(size=(f, n, OBS))
        avail = rng.integers(0, 2, (f, n, A))
        avail[..., 0] = 1  # the no-op is always available
        out["avail_actions"][i, :f] = avail
        for t in range(f):
            for j in range(n):
                out["actions"][i, t, j, 0] = rng.choice(np.flatnonzero(avail[t, j]))
        out["probs"][i, :f] = 1.0 / A
        steps = f if k == f - 1 else max(f - 1, 0)  # pymarl's row F-1 is the final row (reward 0)
        out["reward"][i, :steps, 0] = rng.normal(size=steps)
        if k is not None:
            out["terminated"][i, k] = 1
    return out


def write(path, data):
    with h5py.File(path, "w") as f:
        for key, value in data.items():
            f.create_dataset(key, data=value)
    return path


def transitions(arr):
    return np.concatenate([arr[e, : STEPS[e]] for e in KEPT])


def finals(arr):
    return np.stack([arr[e, EPISODES[e][0] - 1] for e in KEPT])


def test_episodes_finals_and_legal_masks_are_read_from_the_padded_batch(tmp_path):
    data = pymarl_batch(np.random.default_rng(0))
    file = write(tmp_path / "5m_vs_6m_medium.h5", data)
    assert cfcql.looks_like(file) and cfcql.looks_like(tmp_path) and not omiga.looks_like(file)
    # Two episodes per block; the middle block holds only the two skipped episodes.
    opts = ImportOptions(block_rows=2 * L)
    import_dataset("cfcql", file, tmp_path / "out", opts, quiet=True)
    ds = load(tmp_path / "out")  # validated, checksums verified
    ends = np.cumsum([STEPS[e] for e in KEPT]) - 1
    np.testing.assert_array_equal(ds.ends, ends)
    np.testing.assert_array_equal(ds.arrays["terminals"][ends], TERMINAL)
    np.testing.assert_array_equal(ds.arrays["truncations"][ends], np.logical_not(TERMINAL))
    assert ds.arrays["terminals"].sum() == 3 and ds.arrays["truncations"].sum() == 1
    np.testing.assert_array_equal(ds.arrays["observations"], transitions(data["obs"]))
    np.testing.assert_array_equal(ds.arrays["states"], transitions(data["state"]))
    np.testing.assert_array_equal(ds.arrays["actions"], transitions(data["actions"])[..., 0])
    assert ds.arrays["actions"].dtype == np.int32
    np.testing.assert_array_equal(ds.arrays["legal_actions"], transitions(data["avail_actions"]))
    np.testing.assert_array_equal(ds.arrays["rewards"], transitions(data["reward"])[:, 0])
    # Row F-1: the final row pymarl writes (episodes 0, 4, 5), or for episode 1, whose filled
    # rows end at its terminated row, its last transition's row repeated.
    np.testing.assert_array_equal(ds.arrays["final_observations"], finals(data["obs"]))
    np.testing.assert_array_equal(ds.arrays["final_states"], finals(data["state"]))
    np.testing.assert_array_equal(ds.arrays["final_legal_actions"], finals(data["avail_actions"]))
    np.testing.assert_array_equal(ds.arrays["final_observations"][0], data["obs"][0, 3])
    np.testing.assert_array_equal(ds.arrays["final_observations"][1], data["obs"][1, 2])
    spec = ds.spec
    assert spec.env_id == "cfcql:5m_vs_6m" and ds.quality == "medium"
    assert (spec.num_agents, spec.obs_dim, spec.state_dim, spec.action_dim) == (N, OBS, S, A)
    assert spec.discrete and spec.episode_limit == L - 1 and not spec.state_is_obs_concat
    prov = ds.provenance
    assert prov["format"] == "cfcql"
    info = prov["cfcql"]
    assert (info["episodes"], info["episodes_kept"], info["transitions"]) == (6, 4, 16)
    assert (info["terminal_episodes"], info["truncated_episodes"]) == (3, 1)
    assert info["episodes_without_final_row"] == 1
    notes = " ".join(prov["transformations"])
    for words in (
        "padding rows (filled == 0) are removed",
        "3 terminal episodes (terminated set) and 1 truncated",
        "skipped 2 episodes with no transition",
        "1 terminal episodes have no row after their last transition",
        "probs: behaviour probabilities not kept",
    ):
        assert words in notes, notes


def test_a_directory_holds_one_dataset_per_file_named_by_its_stem(tmp_path):
    rng = np.random.default_rng(1)
    write(tmp_path / "5m_vs_6m_expert.h5", pymarl_batch(rng))
    write(tmp_path / "3s_vs_5z_medium_replay.h5", pymarl_batch(rng, n=3))
    done = import_dataset("cfcql", tmp_path, tmp_path / "out", quiet=True)
    assert sorted(d.path.name for d in done) == ["3s_vs_5z_medium_replay", "5m_vs_6m_expert"]
    ds = load(tmp_path / "out" / "3s_vs_5z_medium_replay")
    assert ds.spec.env_id == "cfcql:3s_vs_5z" and ds.quality == "medium_replay"
    assert ds.spec.num_agents == 3 and ds.num_transitions == 16
    assert load(tmp_path / "out" / "5m_vs_6m_expert").spec.env_id == "cfcql:5m_vs_6m"
    assert cfcql.split_name("corridor") == ("corridor", None)
    assert cfcql.split_name("2c_vs_64zg_random") == ("2c_vs_64zg", "random")


def test_malformed_files_name_the_file_field_and_index(tmp_path):
    rng = np.random.default_rng(2)

    bad = pymarl_batch(rng)
    bad["filled"][3] = np.array([1, 0, 0, 1, 0, 0])[:, None]  # a filled row after a gap
    file = write(tmp_path / "gap_medium.h5", bad)
    with pytest.raises(DatasetError) as err:
        import_dataset("cfcql", file, tmp_path / "x", quiet=True)
    assert str(err.value).startswith(f"{file}: field 'filled' at index (3, 3): ")

    bad = pymarl_batch(rng)
    bad["terminated"][5, 1] = 1  # the episode has 6 filled rows: terminated at 4 or 5 only
    file = write(tmp_path / "early_medium.h5", bad)
    with pytest.raises(DatasetError) as err:
        import_dataset("cfcql", file, tmp_path / "x", quiet=True)
    assert str(err.value).startswith(f"{file}: field 'terminated' at index (5, 1): ")
    assert "terminated before the last filled rows" in str(err.value)

    bad = pymarl_batch(rng)
    bad["reward"] = bad["reward"][:, :-1]
    file = write(tmp_path / "reward_medium.h5", bad)
    with pytest.raises(DatasetError, match=f"{file}: field 'reward': shape \\(6, 5, 1\\)"):
        import_dataset("cfcql", file, tmp_path / "x", quiet=True)

    bad = pymarl_batch(rng)
    del bad["state"]
    file = write(tmp_path / "nostate_medium.h5", bad)
    with pytest.raises(DatasetError, match=f"{file}: field 'state': missing"):
        import_dataset("cfcql", file, tmp_path / "x", quiet=True)

    # An action its legal mask forbids: reported at the file's (episode, step, agent).
    bad = pymarl_batch(rng)
    bad["avail_actions"][5, 2, 1, bad["actions"][5, 2, 1, 0]] = 0
    bad["avail_actions"][5, 2, 1, 0 if bad["actions"][5, 2, 1, 0] else 1] = 1
    file = write(tmp_path / "forbidden_medium.h5", bad)
    with pytest.raises(DatasetError) as err:
        import_dataset("cfcql", file, tmp_path / "x", quiet=True)
    assert str(err.value).startswith(f"{file}: field 'actions' at index (5, 2, 1): ")
    assert not (tmp_path / "x").exists()

    # A truncated episode's final row (episode 4, row 5) with no legal action for agent 0.
    bad = pymarl_batch(rng)
    bad["avail_actions"][4, 5, 0] = 0
    file = write(tmp_path / "final_medium.h5", bad)
    with pytest.raises(DatasetError) as err:
        import_dataset("cfcql", file, tmp_path / "x", quiet=True)
    assert str(err.value).startswith(f"{file}: field 'avail_actions' at index (4, 5, 0): ")


def test_agent_id_is_detected_and_stripped(tmp_path):
    data = pymarl_batch(np.random.default_rng(3))
    eye = np.broadcast_to(np.eye(N, dtype=np.float32), (*data["obs"].shape[:2], N, N))
    data["obs"] = np.concatenate([eye, data["obs"]], axis=-1)  # a one-hot id first
    file = write(tmp_path / "3m_expert.h5", data)
    opts = ImportOptions(strip_agent_id=True, block_rows=2 * L)
    (ds,) = import_dataset("cfcql", file, tmp_path / "out", opts, quiet=True)
    assert ds.spec.obs_dim == OBS
    np.testing.assert_array_equal(ds.arrays["observations"], transitions(data["obs"])[..., N:])
    np.testing.assert_array_equal(ds.arrays["final_observations"], finals(data["obs"])[..., N:])
    assert "one-hot agent id at dims [0, 2), removed" in " ".join(ds.provenance["transformations"])

    # A later episode's final row without the id: reported at its (episode, row, agent, dim).
    data["obs"][5, 5, 1, 1] = 0.0
    file = write(tmp_path / "3m_bad.h5", data)
    with pytest.raises(DatasetError) as err:
        import_dataset("cfcql", file, tmp_path / "bad", opts, quiet=True)
    assert str(err.value).startswith(f"{file}: field 'obs' at index (5, 5, 1, 1): ")
