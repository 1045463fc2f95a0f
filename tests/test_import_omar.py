"""OMAR import: per-agent .npy files written with numpy in OMAR's seed directory layout."""

import numpy as np
import pytest

from macflow.data import DatasetError, load
from macflow.data.imports import ImportOptions, detect, import_dataset, madiff, omar

L = 25  # OMAR's MPE episode length


def write_seed(
    folder,
    rng,
    *,
    episodes=4,
    length=L,
    obs_dims=(4, 4, 4),
    act_dims=(2, 2, 2),
    state=None,
    dones=(),
):
    """One ``seed_<k>_data`` directory as OMAR's ReplayBuffer holds it (float64, flat in time).

    Each episode has ``length + 1`` observations: rows 0..length-1 are ``obs_i`` and rows
    1..length ``next_obs_i``, so the next observation is exact and the last one is final.
    ``state``: ``"same"`` (every agent holds one state) or ``"own"`` (each its own), with size 3.
    ``dones``: rows whose ``dones_i`` are set (for every agent).
    """
    folder.mkdir(parents=True)
    rows = episodes * length
    data = {}
    for i, (o, a) in enumerate(zip(obs_dims, act_dims, strict=True)):
        seq = rng.normal(size=(episodes, length + 1, o))
        data[f"obs_{i}"] = seq[:, :-1].reshape(rows, o)
        data[f"next_obs_{i}"] = seq[:, 1:].reshape(rows, o)
        data[f"acs_{i}"] = rng.uniform(-1, 1, (rows, a))
        data[f"rews_{i}"] = rng.normal(size=rows)
        data[f"dones_{i}"] = np.zeros(rows)
        data[f"dones_{i}"][list(dones)] = 1.0
    if state is not None:
        shared = rng.normal(size=(episodes, length + 1, 3))
        for i in range(len(obs_dims)):
            seq = shared if state == "same" else rng.normal(size=(episodes, length + 1, 3))
            data[f"states_{i}"] = seq[:, :-1].reshape(rows, 3)
            data[f"next_states_{i}"] = seq[:, 1:].reshape(rows, 3)
    for name, arr in data.items():
        np.save(folder / f"{name}.npy", arr)
    return data


def stack(data, name, n, size=None):
    """Agents' ``name_i`` arrays as ``[T, N, size]`` float32, zero-padded."""
    arrays = [np.asarray(data[f"{name}_{i}"], np.float32) for i in range(n)]
    size = size or max(a.shape[1] for a in arrays)
    out = np.zeros((len(arrays[0]), n, size), np.float32)
    for i, a in enumerate(arrays):
        out[:, i, : a.shape[1]] = a
    return out


def notes(ds):
    return " ".join(ds.provenance["transformations"])


def test_mpe_seeds_are_concatenated_with_exact_final_observations(tmp_path):
    rng = np.random.default_rng(0)
    top = tmp_path / "datasets" / "simple_spread" / "medium-replay"
    seeds = [write_seed(top / f"seed_{k}_data", rng) for k in (0, 1)]
    assert omar.looks_like(top) and omar.looks_like(top / "seed_1_data")
    assert detect(top) == "omar" and detect(top / "seed_0_data") == "omar"
    assert not omar.looks_like(top.parent) and not madiff.looks_like(top)

    opts = ImportOptions(block_rows=30)  # several blocks of whole 25-step episodes
    (ds,) = import_dataset("omar", top, tmp_path / "out", opts, quiet=True)
    ds = load(tmp_path / "out")  # validated, checksums verified
    n, rows, ends = 3, 200, np.arange(24, 200, 25)
    obs = np.concatenate([stack(d, "obs", n) for d in seeds])
    nxt = np.concatenate([stack(d, "next_obs", n) for d in seeds])
    np.testing.assert_array_equal(ds.arrays["observations"], obs)
    np.testing.assert_array_equal(ds.arrays["states"], obs.reshape(rows, -1))
    np.testing.assert_array_equal(
        ds.arrays["actions"], np.concatenate([stack(d, "acs", n) for d in seeds])
    )
    # The exact final observation: next_obs at each episode's last step.
    np.testing.assert_array_equal(ds.arrays["final_observations"], nxt[ends])
    np.testing.assert_array_equal(ds.arrays["final_states"], nxt[ends].reshape(8, -1))
    rews = np.concatenate([np.stack([d[f"rews_{i}"] for i in range(n)], 1) for d in seeds])
    np.testing.assert_allclose(ds.arrays["rewards"], rews.mean(1), rtol=1e-5, atol=1e-6)
    # MPE never terminates: a truncation every 25 rows, no terminal.
    np.testing.assert_array_equal(ds.ends, ends)
    assert ds.arrays["truncations"][ends].all() and ds.arrays["truncations"].sum() == 8
    assert not ds.arrays["terminals"].any()

    spec = ds.spec
    assert spec.env_id == "omar:simple_spread" and ds.quality == "medium-replay"
    assert (spec.num_agents, spec.obs_dim, spec.state_dim, spec.action_dim) == (3, 4, 12, 2)
    assert not spec.discrete and spec.episode_limit == 25 and spec.state_is_obs_concat
    assert spec.action_low == (-1.0, -1.0) and spec.action_high == (1.0, 1.0)
    prov = ds.provenance["omar"]
    assert [(s["seed"], s["rows"]) for s in prov["seeds"]] == [(0, [0, 100]), (1, [100, 200])]
    assert prov["episode_length"] == 25 and prov["truncated_episodes"] == 8
    text = notes(ds)
    for words in (
        "fixed length 25 (MPE)",
        "0 terminal and 8 truncated episodes",
        "next_obs_i at each episode's last step",
        "no global state; observations concatenated",
        "rewards rews_i reduced to the team reward by their mean",
        "seeds [0, 1] concatenated in seed order",
    ):
        assert words in text, text
    assert "zero-padded" not in text

    # One seed directory is one dataset; the scenario and quality come from its parents.
    opts = ImportOptions(team_reward="sum", final="drop")  # finals are stored: drop changes none
    (one,) = import_dataset("omar", top / "seed_1_data", tmp_path / "one", opts, quiet=True)
    np.testing.assert_array_equal(one.arrays["observations"], obs[100:])
    np.testing.assert_array_equal(one.arrays["final_observations"], nxt[ends[4:]])
    np.testing.assert_allclose(one.arrays["rewards"], rews[100:].sum(1), rtol=1e-5, atol=1e-6)
    assert one.spec.env_id == "omar:simple_spread" and one.quality == "medium-replay"
    assert [s["seed"] for s in one.provenance["omar"]["seeds"]] == [1]
    assert "seeds [" not in notes(one)
    # OMAR's score of simple_tag/world: the first predator's reward.
    opts = ImportOptions(team_reward="agent0")
    (first,) = import_dataset("omar", top / "seed_1_data", tmp_path / "first", opts, quiet=True)
    np.testing.assert_array_equal(first.arrays["rewards"], rews[100:, 0].astype(np.float32))
    assert "agent 0's reward is the team reward" in notes(first)


def test_agents_of_different_sizes_are_zero_padded(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "simple_tag" / "expert" / "seed_0_data"
    # simple_tag: three predators and a prey whose observation is shorter.
    data = write_seed(folder, rng, episodes=2, obs_dims=(5, 5, 5, 3), act_dims=(2, 2, 2, 1))
    (ds,) = import_dataset("omar", folder, tmp_path / "out", quiet=True)
    obs = stack(data, "obs", 4)
    assert obs.shape[2] == 5 and not obs[:, 3, 3:].any()
    np.testing.assert_array_equal(ds.arrays["observations"], obs)
    np.testing.assert_array_equal(
        ds.arrays["final_observations"], stack(data, "next_obs", 4)[[24, 49]]
    )
    np.testing.assert_array_equal(ds.arrays["actions"], stack(data, "acs", 4))
    assert ds.arrays["actions"][:, 3, 1].max() == 0.0
    assert (ds.spec.num_agents, ds.spec.obs_dim, ds.spec.state_dim, ds.spec.action_dim) == (
        4,
        5,
        20,
        2,
    )
    assert ds.provenance["omar"]["obs_dims"] == [5, 5, 5, 3]
    text = notes(ds)
    assert "sizes [5, 5, 5, 3] differ; each is zero-padded at the end to 5" in text, text
    assert "sizes [2, 2, 2, 1] differ; each is zero-padded at the end to 2" in text, text


def test_mamujoco_per_agent_states_and_dones(tmp_path):
    rng = np.random.default_rng(2)
    top = tmp_path / "HalfCheetah-v2" / "expert"
    ends = [9, 19, 29]
    # HalfCheetah's time limit sets dones at the last step of every episode: truncations.
    same = write_seed(
        top / "seed_0_data",
        rng,
        episodes=3,
        length=10,
        obs_dims=(3, 3),
        act_dims=(3, 3),
        state="same",
        dones=ends,
    )
    opts = ImportOptions(episode_limit=10, block_rows=12)
    (ds,) = import_dataset("omar", top / "seed_0_data", tmp_path / "same", opts, quiet=True)
    np.testing.assert_array_equal(ds.arrays["states"], np.asarray(same["states_0"], np.float32))
    np.testing.assert_array_equal(
        ds.arrays["final_states"], np.asarray(same["next_states_1"], np.float32)[ends]
    )
    np.testing.assert_array_equal(ds.arrays["final_observations"], stack(same, "next_obs", 2)[ends])
    assert ds.arrays["truncations"][ends].all() and not ds.arrays["terminals"].any()
    assert ds.spec.state_dim == 3 and not ds.spec.state_is_obs_concat
    assert ds.spec.episode_limit == 10
    text = notes(ds)
    assert "fixed length 10 (--episode-limit)" in text
    assert "agent 0's copy is the state" in text
    assert "set at the last step of 3 episodes, which are truncations" in text, text

    # Each agent its own state: concatenated. A task that may terminate: the dones are terminals.
    own_dir = tmp_path / "my_task" / "medium" / "seed_3_data"
    own = write_seed(
        own_dir,
        rng,
        episodes=3,
        length=10,
        obs_dims=(3, 3),
        act_dims=(3, 3),
        state="own",
        dones=[19],
    )
    (ds,) = import_dataset("omar", own_dir, tmp_path / "own", opts, quiet=True)
    np.testing.assert_array_equal(ds.arrays["states"], stack(own, "states", 2).reshape(30, 6))
    np.testing.assert_array_equal(
        ds.arrays["final_states"], stack(own, "next_states", 2)[ends].reshape(3, 6)
    )
    np.testing.assert_array_equal(ds.arrays["terminals"][ends], [False, True, False])
    np.testing.assert_array_equal(ds.arrays["truncations"][ends], [True, False, True])
    assert ds.spec.env_id == "omar:my_task" and ds.quality == "medium"
    assert ds.provenance["omar"]["seeds"][0]["seed"] == 3
    assert "concatenated into [T, N*S]" in notes(ds)

    # agent0 demanded, but the agents' states differ: reported at the first difference.
    with pytest.raises(DatasetError) as err:
        import_dataset(
            "omar",
            own_dir,
            tmp_path / "x",
            ImportOptions(episode_limit=10, state_reduction="agent0"),
            quiet=True,
        )
    assert str(err.value).startswith(
        f"{own_dir}/states_<i>.npy: field 'states_<i>' at index (0, 1, 0)"
    )

    # Without --episode-limit MA-MuJoCo episodes are 1000 steps, which 30 rows cannot hold.
    with pytest.raises(DatasetError) as err:
        import_dataset("omar", own_dir, tmp_path / "x", quiet=True)
    assert str(err.value).startswith(f"{own_dir}/obs_0.npy: field 'obs_0': holds T=30 rows")
    assert "multiple of the episode length 1000" in str(err.value)


def test_malformed_seeds_name_the_file_field_and_index(tmp_path):
    rng = np.random.default_rng(3)

    def seed(name, **kw):
        folder = tmp_path / "simple_spread" / name / "seed_0_data"
        return folder, write_seed(folder, rng, **kw)

    # A done in the middle of a 25-step episode: the fixed-length assumption fails.
    folder, _ = seed("mid", dones=[30])
    with pytest.raises(DatasetError) as err:
        import_dataset("omar", folder, tmp_path / "x", quiet=True)
    assert str(err.value).startswith(
        f"{folder}/dones_0.npy: field 'dones_0' at index 30: set at step 5"
    )
    assert "do not all last 25 steps" in str(err.value)

    # next_obs that does not continue into the next row: reported at (row, dim).
    folder, data = seed("jump")
    data["next_obs_2"][60, 1] += 1.0
    np.save(folder / "next_obs_2.npy", data["next_obs_2"])
    with pytest.raises(DatasetError) as err:
        import_dataset("omar", folder, tmp_path / "x", ImportOptions(block_rows=30), quiet=True)
    message = str(err.value)
    assert message.startswith(f"{folder}/next_obs_2.npy: field 'next_obs_2' at index (60, 1)")
    assert "step 10" in message and "--episode-limit" in message

    # Episodes of 50 steps read as 25: next_obs runs on across the assumed episode end.
    folder, _ = seed("long", episodes=2, length=50)
    with pytest.raises(DatasetError) as err:
        import_dataset("omar", folder, tmp_path / "x", quiet=True)
    assert str(err.value).startswith(f"{folder}/next_obs_<i>.npy: field 'next_obs_<i>' at index 24")
    (ds,) = import_dataset(
        "omar", folder, tmp_path / "ok", ImportOptions(episode_limit=50), quiet=True
    )
    np.testing.assert_array_equal(ds.ends, [49, 99])

    # Rows that are not whole episodes.
    folder = tmp_path / "simple_spread" / "short" / "seed_0_data"
    write_seed(folder, rng, episodes=1, length=30)
    with pytest.raises(DatasetError, match=f"{folder}/obs_0.npy: field 'obs_0': holds T=30 rows"):
        import_dataset("omar", folder, tmp_path / "x", quiet=True)

    # Missing files of an agent, and agents not numbered 0..N-1.
    folder, _ = seed("noacs")
    (folder / "acs_1.npy").unlink()
    with pytest.raises(DatasetError, match=f"{folder}/acs_1.npy: field 'acs_1': missing"):
        import_dataset("omar", folder, tmp_path / "x", quiet=True)
    folder, _ = seed("gap")
    for name in omar.AGENT_FILES:
        (folder / f"{name}_1.npy").unlink()
    with pytest.raises(DatasetError, match=f"{folder}/obs_1.npy: field 'obs_1': missing"):
        import_dataset("omar", folder, tmp_path / "x", quiet=True)

    # A short array: its shape, against obs_0's rows.
    folder, data = seed("rows")
    np.save(folder / "rews_2.npy", data["rews_2"][:-1])
    with pytest.raises(DatasetError) as err:
        import_dataset("omar", folder, tmp_path / "x", quiet=True)
    assert str(err.value).startswith(f"{folder}/rews_2.npy: field 'rews_2': shape (99,)")

    # An action outside [-1, 1] in the second seed: reported at (k, row, agent, dim).
    top = tmp_path / "simple_spread" / "bounds"
    write_seed(top / "seed_0_data", rng)
    bad = write_seed(top / "seed_1_data", rng)
    bad["acs_2"][30, 1] = 1.5
    np.save(top / "seed_1_data" / "acs_2.npy", bad["acs_2"])
    with pytest.raises(DatasetError) as err:
        import_dataset("omar", top, tmp_path / "x", ImportOptions(block_rows=30), quiet=True)
    assert str(err.value).startswith(
        f"{top}/seed_<k>_data/acs_<i>.npy: field 'acs_<i>' at index (1, 30, 2, 1): value 1.5"
    )
    assert not (tmp_path / "x").exists()

    # Seeds of different tasks.
    write_seed(top / "seed_2_data", rng, obs_dims=(4, 4, 5))
    with pytest.raises(DatasetError, match=f"{top}/seed_2_data/obs_2.npy: field 'obs_2': 5 col"):
        import_dataset("omar", top, tmp_path / "x", quiet=True)

    with pytest.raises(DatasetError, match="holds neither obs_<i>.npy files"):
        import_dataset("omar", tmp_path, tmp_path / "x", quiet=True)


def test_strip_agent_id(tmp_path):
    rng = np.random.default_rng(4)
    folder = tmp_path / "simple_spread" / "random" / "seed_0_data"
    data = write_seed(folder, rng, episodes=2)
    eye = np.eye(3)
    for i in range(3):  # a one-hot agent id in front of every observation
        for name in ("obs", "next_obs"):
            ids = np.broadcast_to(eye[i], (50, 3))
            data[f"{name}_{i}"] = np.concatenate([ids, data[f"{name}_{i}"]], 1)
            np.save(folder / f"{name}_{i}.npy", data[f"{name}_{i}"])
    (kept,) = import_dataset("omar", folder, tmp_path / "kept", quiet=True)
    assert kept.spec.obs_dim == 7 and "agent id at dims [0, 3), kept" in notes(kept)
    opts = ImportOptions(strip_agent_id=True, block_rows=25)
    (ds,) = import_dataset("omar", folder, tmp_path / "out", opts, quiet=True)
    obs = stack(data, "obs", 3)[:, :, 3:]
    np.testing.assert_array_equal(ds.arrays["observations"], obs)
    np.testing.assert_array_equal(ds.arrays["states"], obs.reshape(50, 12))
    np.testing.assert_array_equal(
        ds.arrays["final_observations"], stack(data, "next_obs", 3)[[24, 49], :, 3:]
    )
    assert ds.spec.obs_dim == 4 and ds.spec.state_dim == 12
    assert "agent id at dims [0, 3), removed (--strip-agent-id)" in notes(ds)

    # The id is missing from a final observation of a later block.
    data["next_obs_1"][49, 1] = 0.0
    np.save(folder / "next_obs_1.npy", data["next_obs_1"])
    with pytest.raises(DatasetError) as err:
        import_dataset("omar", folder, tmp_path / "x", opts, quiet=True)
    assert str(err.value).startswith(
        f"{folder}/next_obs_1.npy: field 'next_obs_1' at index (49, 1)"
    )

    other = tmp_path / "simple_spread" / "random" / "seed_1_data"
    write_seed(other, rng, episodes=1)
    with pytest.raises(DatasetError, match=f"{other}/obs_0.npy: field 'obs_0': --strip-agent-id"):
        import_dataset("omar", other, tmp_path / "x", opts, quiet=True)
