"""MADiff import: .npy datasets written with numpy in MADiff's layout."""

import numpy as np
import pytest

from macflow.data import DatasetError, load
from macflow.data.imports import ImportOptions, detect, import_dataset, madiff, omar

N, FEATS, S, A = 3, 4, 5, 6
LENGTHS = [4, 6, 3, 5]  # episodes 0 and 2 end in a terminal (discount 0), 1 and 3 are truncated
ENDS = np.cumsum(LENGTHS) - 1  # [3, 9, 12, 17]
TERMINAL = [True, False, True, False]


def smac_like(rng, lengths=LENGTHS, terminal=TERMINAL):
    """What transform_og_marl_dataset.py writes for SMAC: obs with the agent id prepended,
    float legal masks, int actions (T, N, 1), team rewards and discounts copied per agent."""
    rows = sum(lengths)
    ends = np.cumsum(lengths) - 1
    ids = np.broadcast_to(np.eye(N, dtype=np.float32), (rows, N, N))
    legals = (rng.uniform(size=(rows, N, A)) < 0.5).astype(np.float32)
    legals[..., 0] = 1.0  # the no-op is always legal
    actions = np.array(
        [[rng.choice(np.flatnonzero(legals[t, i])) for i in range(N)] for t in range(rows)]
    )
    discounts = np.ones((rows, N), np.float32)
    discounts[ends[np.asarray(terminal)]] = 0.0
    reward = rng.normal(size=(rows, 1)).astype(np.float32)
    return {
        "obs": np.concatenate([ids, rng.normal(size=(rows, N, FEATS)).astype(np.float32)], -1),
        "actions": actions[..., None].astype(np.int64),
        "rewards": np.repeat(reward, N, axis=1),
        "discounts": discounts,
        "legals": legals,
        "states": rng.normal(size=(rows, S)).astype(np.float32),
        "path_lengths": np.asarray(lengths, np.int64),
    }


def write(folder, data):
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in data.items():
        np.save(folder / f"{name}.npy", arr)
    return folder


def notes(ds):
    return " ".join(ds.provenance["transformations"])


def test_smac_dataset_with_agent_id_kept_and_repeated_finals(tmp_path):
    data = smac_like(np.random.default_rng(0))
    folder = write(tmp_path / "data" / "smac" / "3m" / "Good", data)
    assert madiff.looks_like(folder) and detect(folder) == "madiff"
    assert not omar.looks_like(folder) and not madiff.looks_like(folder.parent)

    (ds,) = import_dataset(
        "madiff", folder, tmp_path / "out", ImportOptions(block_rows=7), quiet=True
    )
    ds = load(tmp_path / "out")  # validated, checksums verified
    np.testing.assert_array_equal(ds.arrays["observations"], data["obs"])
    np.testing.assert_array_equal(ds.arrays["states"], data["states"])
    np.testing.assert_array_equal(ds.arrays["actions"], data["actions"][..., 0])
    assert ds.arrays["actions"].dtype == np.int32
    np.testing.assert_array_equal(ds.arrays["legal_actions"], data["legals"] == 1)
    # SMAC's team reward is copied to every agent: their mean is the team reward.
    np.testing.assert_allclose(ds.arrays["rewards"], data["rewards"][:, 0], rtol=1e-6)
    np.testing.assert_array_equal(ds.ends, ENDS)
    np.testing.assert_array_equal(ds.arrays["terminals"][ENDS], TERMINAL)
    np.testing.assert_array_equal(ds.arrays["truncations"][ENDS], np.logical_not(TERMINAL))
    # No next observation stored: --final repeat copies each episode's last row.
    np.testing.assert_array_equal(ds.arrays["final_observations"], data["obs"][ENDS])
    np.testing.assert_array_equal(ds.arrays["final_states"], data["states"][ENDS])
    np.testing.assert_array_equal(ds.arrays["final_legal_actions"], data["legals"][ENDS] == 1)

    spec = ds.spec
    assert spec.env_id == "madiff:3m" and ds.quality == "good"
    assert (spec.num_agents, spec.obs_dim, spec.state_dim, spec.action_dim) == (3, 7, 5, 6)
    assert spec.discrete and spec.episode_limit == 6 and not spec.state_is_obs_concat
    prov = ds.provenance["madiff"]
    assert prov["episodes"] == 4 and prov["terminal_episodes"] == 2 and prov["episode_limit"] == 6
    assert prov["scenario"] == "3m" and "legals.npy" in prov["files"]
    text = notes(ds)
    for words in (
        "lengths of path_lengths.npy",
        "2 terminal and 2 truncated episodes",
        "one-hot agent id at dims [0, 3), kept",
        "reduced to the team reward by their mean",
        "--final repeat",
    ):
        assert words in text, text
    assert "every action is legal" not in text and "discounts: 0 before" not in text


def test_strip_agent_id_and_final_drop(tmp_path):
    data = smac_like(np.random.default_rng(1))
    data["logprobs"] = np.zeros((sum(LENGTHS), N), np.float32)  # kept by MADiff, not by macflow
    folder = write(tmp_path / "5m_vs_6m" / "medium", data)
    opts = ImportOptions(strip_agent_id=True, final="drop", team_reward="sum", block_rows=5)
    (ds,) = import_dataset("madiff", folder, tmp_path / "out", opts, quiet=True)
    ds = load(tmp_path / "out")
    # --final drop: the last row of each truncated episode (9, 17) becomes its final row.
    kept = [r for r in range(sum(LENGTHS)) if r not in (9, 17)]
    assert ds.num_transitions == sum(LENGTHS) - 2
    obs = data["obs"][:, :, N:]
    np.testing.assert_array_equal(ds.arrays["observations"], obs[kept])
    np.testing.assert_array_equal(ds.arrays["final_observations"], obs[ENDS])
    np.testing.assert_array_equal(ds.arrays["final_states"], data["states"][ENDS])
    np.testing.assert_array_equal(ds.arrays["final_legal_actions"], data["legals"][ENDS] == 1)
    np.testing.assert_array_equal(ds.arrays["actions"], data["actions"][kept, :, 0])
    np.testing.assert_allclose(ds.arrays["rewards"], data["rewards"][kept].sum(1), rtol=1e-6)
    np.testing.assert_array_equal(ds.ends, [3, 8, 11, 15])
    np.testing.assert_array_equal(ds.arrays["terminals"][ds.ends], TERMINAL)
    assert ds.spec.obs_dim == FEATS and ds.spec.env_id == "madiff:5m_vs_6m"
    assert ds.quality == "medium"
    text = notes(ds)
    for words in (
        "agent id at dims [0, 3), removed (--strip-agent-id)",
        "--final drop",
        "sum over agents",
        "files not kept: ['logprobs.npy']",
    ):
        assert words in text, text


def test_continuous_and_discrete_without_legals_or_state(tmp_path):
    rng = np.random.default_rng(2)
    rows = sum(LENGTHS)
    # MA-MuJoCo-like: continuous actions, per-agent states all equal, (T,) rewards, (T, 1)
    # discounts, and a directory name that is not a quality.
    shared = rng.normal(size=(rows, 1, S)).astype(np.float32)
    discounts = np.ones((rows, 1), np.float32)
    discounts[ENDS[0]] = 0.0
    cont = {
        "obs": rng.normal(size=(rows, 2, FEATS)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (rows, 2, 3)).astype(np.float32),
        "rewards": rng.normal(size=rows).astype(np.float32),
        "discounts": discounts,
        "states": np.repeat(shared, 2, axis=1),
        "path_lengths": np.asarray(LENGTHS),
    }
    folder = write(tmp_path / "mine", cont)
    (ds,) = import_dataset("madiff", folder, tmp_path / "cont", quiet=True)
    np.testing.assert_array_equal(ds.arrays["actions"], cont["actions"])
    np.testing.assert_array_equal(ds.arrays["states"], shared[:, 0])
    np.testing.assert_array_equal(ds.arrays["rewards"], cont["rewards"])
    np.testing.assert_array_equal(ds.arrays["terminals"][ENDS], [True, False, False, False])
    assert not ds.spec.discrete and ds.spec.action_dim == 3 and ds.spec.state_dim == S
    assert ds.spec.action_low == (-1.0,) * 3
    assert ds.spec.env_id == "madiff:mine" and ds.quality == "unknown"
    text = notes(ds)
    assert "agent 0's copy is the state" in text and "agent id" not in text
    assert "reduced to the team reward" not in text

    # Discrete (integer) actions without legals.npy or states.npy: all legal, obs concatenated.
    data = smac_like(rng)
    del data["legals"], data["states"]
    data["actions"] = data["actions"][..., 0].astype(np.int32)  # (T, N)
    data["discounts"][ENDS[1], 1] = 0.0  # one agent's discount 0 at a truncated end: terminal
    data["discounts"][5, 0] = 0.0  # and one before an episode's end: ignored
    folder = write(tmp_path / "2s3z" / "Poor", data)
    (ds,) = import_dataset("madiff", folder, tmp_path / "disc", quiet=True)
    top = int(data["actions"].max()) + 1
    assert ds.spec.discrete and ds.spec.action_dim == top and ds.spec.state_is_obs_concat
    assert ds.arrays["legal_actions"].all() and ds.arrays["legal_actions"].shape[2] == top
    np.testing.assert_array_equal(ds.arrays["states"], data["obs"].reshape(len(data["obs"]), -1))
    np.testing.assert_array_equal(ds.arrays["terminals"][ENDS], [True, True, True, False])
    assert ds.quality == "poor"
    text = notes(ds)
    for words in (
        f"every action is legal; the number of actions {top}",
        "no states.npy; observations concatenated",
        "disagree at the last step of 1 episodes",
        "0 before an episode's last step on 1 rows",
    ):
        assert words in text, text


def test_malformed_datasets_name_the_file_field_and_index(tmp_path):
    rng = np.random.default_rng(3)

    def dataset(name, **change):
        data = smac_like(rng)
        data.update(change)
        return write(tmp_path / name, data), data

    folder, _ = dataset("sum", path_lengths=np.asarray([4, 6, 3, 4]))
    with pytest.raises(DatasetError) as err:
        import_dataset("madiff", folder, tmp_path / "x", quiet=True)
    message = str(err.value)
    assert message.startswith(f"{folder}/path_lengths.npy: field 'path_lengths'")
    assert "sum to 17, but obs.npy holds 18 rows" in message

    folder, data = dataset("rows")
    np.save(folder / "rewards.npy", data["rewards"][:-1])
    with pytest.raises(DatasetError, match=f"{folder}/rewards.npy: field 'rewards': shape"):
        import_dataset("madiff", folder, tmp_path / "x", quiet=True)

    folder, _ = dataset("zero", path_lengths=np.asarray([4, 6, 0, 3, 5]))
    with pytest.raises(DatasetError, match=f"{folder}/path_lengths.npy: .* at index 2: episode"):
        import_dataset("madiff", folder, tmp_path / "x", quiet=True)

    folder, _ = dataset("limit")
    with pytest.raises(
        DatasetError, match=f"{folder}/path_lengths.npy: .* at index 1: episode of 6"
    ):
        import_dataset("madiff", folder, tmp_path / "x", ImportOptions(episode_limit=5), quiet=True)

    # An action its legal mask forbids: reported at the source row and agent.
    folder, data = dataset("illegal")
    data["legals"][11, 2, 0] = 0.0
    data["legals"][11, 2, 1] = 1.0
    data["actions"][11, 2, 0] = 0
    np.save(folder / "legals.npy", data["legals"])
    np.save(folder / "actions.npy", data["actions"])
    with pytest.raises(DatasetError) as err:
        import_dataset("madiff", folder, tmp_path / "x", ImportOptions(block_rows=7), quiet=True)
    assert str(err.value).startswith(
        f"{folder}/actions.npy: field 'actions' at index (11, 2): action 0 is forbidden"
    )

    # Float action indices (legals.npy makes the task discrete) must be whole numbers.
    folder, data = dataset("float", actions=smac_like(rng)["actions"].astype(np.float32))
    data["actions"][13, 1, 0] = 0.5
    np.save(folder / "actions.npy", data["actions"])
    with pytest.raises(DatasetError) as err:
        import_dataset("madiff", folder, tmp_path / "x", quiet=True)
    assert str(err.value).startswith(f"{folder}/actions.npy: field 'actions' at index (13, 1)")

    # --strip-agent-id: the id found on the first block is gone from a later one.
    folder, data = dataset("noid")
    data["obs"][15, 1, :N] = 0.0
    np.save(folder / "obs.npy", data["obs"])
    strip = ImportOptions(strip_agent_id=True, block_rows=7)
    with pytest.raises(DatasetError) as err:
        import_dataset("madiff", folder, tmp_path / "x", strip, quiet=True)
    assert str(err.value).startswith(f"{folder}/obs.npy: field 'obs' at index (15, 1, 1)")

    folder, _ = dataset("nodisc")
    (folder / "discounts.npy").unlink()
    with pytest.raises(DatasetError, match=f"{folder}/discounts.npy: field 'discounts': missing"):
        import_dataset("madiff", folder, tmp_path / "x", quiet=True)

    # A directory of datasets: pointed at them.
    with pytest.raises(DatasetError, match="its directories .*'float'.* are MADiff datasets"):
        import_dataset("madiff", tmp_path, tmp_path / "x", quiet=True)
    assert not (tmp_path / "x").exists()
