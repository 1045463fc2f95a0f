"""OG-MARL vault import: vaults written by the real flashbax, read back with tensorstore alone."""

import json
import shutil

import numpy as np
import pytest
from test_cli_train import TINY

from macflow.data import DatasetError, load
from macflow.data.imports import ImportOptions, detect, import_dataset

from test_cli import run
from vaults import smac_like, write_vault

pytest.importorskip("flashbax")


def expected_episodes(exp):
    """Per batch row: last step of each episode, whether it is a terminal, and steps kept."""
    out = []
    for b in range(exp["terminals"].shape[0]):
        term = exp["terminals"][b].any(-1)
        done = term | exp["truncations"][b].any(-1)
        ends = np.flatnonzero(done)
        out.append((ends, term[ends], int(ends[-1]) + 1))
    return out


@pytest.fixture(scope="module")
def vlt(tmp_path_factory):
    root = tmp_path_factory.mktemp("vaults")
    rng = np.random.default_rng(0)
    good, poor = smac_like(rng), smac_like(rng, lengths=(4, 9))
    write_vault(root, "3m.vlt", "Good", good, chunk=25)  # several writes, as a logger does
    write_vault(root, "3m.vlt", "Poor", poor)
    return root / "3m.vlt", {"Good": good, "Poor": poor}


def test_every_uid_is_converted_with_episodes_rewards_legals_and_state(vlt, tmp_path):
    path, source = vlt
    assert detect(path) == "og-marl" and detect(path / "Good") == "og-marl"
    out = tmp_path / "out"
    done = import_dataset("og-marl", path, out, quiet=True)
    assert sorted(d.path.name for d in done) == ["Good", "Poor"]
    for uid, exp in source.items():
        ds = load(out / uid)  # validated, checksums verified
        rows = expected_episodes(exp)
        cat = {
            k: np.concatenate([exp[k][b, :kept] for b, (_, _, kept) in enumerate(rows)])
            for k in ("observations", "actions", "rewards")
        }
        legal = np.concatenate(
            [exp["infos"]["legals"][b, :kept] for b, (*_, kept) in enumerate(rows)]
        )
        state = np.concatenate(
            [exp["infos"]["state"][b, :kept] for b, (*_, kept) in enumerate(rows)]
        )
        np.testing.assert_array_equal(ds.arrays["observations"], cat["observations"])
        np.testing.assert_array_equal(ds.arrays["actions"], cat["actions"])
        np.testing.assert_array_equal(ds.arrays["legal_actions"], legal == 1)
        np.testing.assert_array_equal(ds.arrays["states"], state)
        np.testing.assert_allclose(ds.arrays["rewards"], cat["rewards"].mean(-1), rtol=1e-6)
        offset, ends, terminal = 0, [], []
        for e, t, kept in rows:
            ends.append(e + offset)
            terminal.append(t)
            offset += kept
        ends, terminal = np.concatenate(ends), np.concatenate(terminal)
        np.testing.assert_array_equal(ds.ends, ends)
        np.testing.assert_array_equal(ds.arrays["terminals"][ends], terminal)
        np.testing.assert_array_equal(ds.arrays["truncations"][ends], ~terminal)
        assert terminal.any() and (~terminal).any()
        # No next observation in a vault: --final repeat copies each episode's last one.
        np.testing.assert_array_equal(ds.arrays["final_observations"], cat["observations"][ends])
        np.testing.assert_array_equal(ds.arrays["final_legal_actions"], legal[ends] == 1)
        assert ds.spec.env_id == "og-marl:3m" and ds.quality == uid.lower()
        assert ds.spec.discrete and ds.spec.action_dim == 4 and ds.spec.state_dim == 7
        prov = ds.provenance
        assert prov["method"] == "import" and prov["format"] == "og-marl"
        assert prov["vault"]["uid"] == uid and prov["vault"]["version"] == 1.2
        assert [r["steps"] for r in prov["batch_rows"]] == [kept for *_, kept in rows]
        notes = " ".join(prov["transformations"])
        dropped = sum(exp["rewards"].shape[1] - kept for *_, kept in rows)
        assert dropped > 0
        for words in (f"dropped {dropped} steps", "rows 0..1 concatenated", "mean over agents"):
            assert words in notes, notes


def test_final_drop_gives_exact_final_observations(vlt, tmp_path):
    path, source = vlt
    opts = ImportOptions(final="drop", uid="Good", block_rows=16)  # small blocks: many writes
    (ds,) = import_dataset("og-marl", path, tmp_path / "good", opts, quiet=True)
    exp = source["Good"]
    rows = expected_episodes(exp)
    truncated = sum(int((~t).sum()) for _, t, _ in rows)
    assert ds.num_transitions == sum(kept for *_, kept in rows) - truncated
    # Row 0's first truncated episode: its dropped last step is the final observation.
    ends, term, _ = rows[0]
    k = int(np.flatnonzero(~term)[0])
    e_end = int(ends[k])
    np.testing.assert_array_equal(ds.arrays["final_observations"][k], exp["observations"][0, e_end])
    # No step was dropped before it, so the step before keeps its index and now ends the episode.
    assert ds.arrays["truncations"][e_end - 1] and not ds.arrays["terminals"][e_end - 1]


def test_continuous_vault_with_per_agent_state_and_agent_id(tmp_path):
    rng = np.random.default_rng(1)
    b, t, n = 1, 30, 2
    obs = rng.normal(size=(b, t, n, 6)).astype(np.float32)
    obs[..., :n] = np.eye(n)  # a one-hot agent id first, as OMIGA-style data carry
    state = np.repeat(rng.normal(size=(b, t, 1, 9)).astype(np.float32), n, axis=2)
    flags = np.zeros((b, t, n), np.float32)
    flags[:, 9::10] = 1.0
    exp = {
        "observations": obs,
        "actions": rng.uniform(-1, 1, (b, t, n, 3)).astype(np.float32),
        "rewards": rng.normal(size=(b, t, n)).astype(np.float32),
        "terminals": np.zeros_like(flags),
        "truncations": flags,
        "infos": {"state": state, "legals": np.ones((b, t, n, 3), np.float32)},
    }
    uid = write_vault(tmp_path, "2halfcheetah.vlt", "Medium", exp)
    (ds,) = import_dataset(
        "og-marl", uid, tmp_path / "hc", ImportOptions(strip_agent_id=True), quiet=True
    )
    assert not ds.spec.discrete and ds.spec.obs_dim == 4 and ds.spec.state_dim == 9
    np.testing.assert_array_equal(ds.arrays["observations"], obs[0, :, :, n:])
    np.testing.assert_array_equal(ds.arrays["states"], state[0, :, 0])
    np.testing.assert_array_equal(ds.arrays["actions"], exp["actions"][0])
    assert ds.num_episodes == 3 and not ds.arrays["terminals"].any()
    notes = " ".join(ds.provenance["transformations"])
    assert "agent id at dims [0, 2), removed" in notes and "agent 0's copy" in notes
    assert "'infos.legals.' not kept" in notes


def test_malformed_vaults_name_the_file_field_and_index(vlt, tmp_path):
    path, source = vlt
    bad = tmp_path / "bad.vlt"
    shutil.copytree(path, bad)
    meta = bad / "Good" / "metadata.json"
    data = json.loads(meta.read_text())
    data["version"] = 2.0
    meta.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"Good/metadata.json: field 'version'.*reads 1\.x"):
        import_dataset("og-marl", bad / "Good", tmp_path / "x", quiet=True)

    del data["structure_shape"]["terminals"]
    data["version"] = 1.2
    meta.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"metadata.json: field 'structure_shape'.*'terminals.'"):
        import_dataset("og-marl", bad / "Good", tmp_path / "x", quiet=True)

    # A recorded action that its legal mask forbids: reported at the vault's (batch, step, agent).
    exp = {k: v for k, v in source["Poor"].items()}
    exp["infos"] = dict(exp["infos"])
    legals = exp["infos"]["legals"].copy()
    legals[1, 13, 2, exp["actions"][1, 13, 2]] = 0.0
    exp["infos"]["legals"] = legals
    uid = write_vault(tmp_path, "broken.vlt", "Poor", exp)
    with pytest.raises(DatasetError) as err:
        import_dataset("og-marl", uid, tmp_path / "y", quiet=True)
    assert str(err.value).startswith(f"{uid}: field 'actions.' at index (1, 13, 2): ")
    assert "forbidden by legal_actions" in str(err.value)
    assert not (tmp_path / "y").exists()  # nothing half-written is left at the target

    with pytest.raises(DatasetError, match="not a vault"):
        import_dataset("og-marl", tmp_path, tmp_path / "z", quiet=True)
    with pytest.raises(DatasetError, match="has no uid 'Expert'; its uids: Good, Poor"):
        import_dataset("og-marl", path, tmp_path / "z", ImportOptions(uid="Expert"), quiet=True)


def test_train_accepts_a_vault_uid_and_converts_it_once(vlt, tmp_path):
    path, _ = vlt
    env = {"MACFLOW_CACHE": str(tmp_path / "cache")}
    args = ["--steps", "10", "--log-every", "10", "--out", str(tmp_path), *TINY]
    several = run("train", "--dataset", str(path), *args, ok=False, env=env)
    assert several.returncode == 2
    assert "holds 2 og-marl datasets (Good, Poor); pass one of them" in several.stderr
    out = run("train", "--dataset", str(path / "Poor"), "--name", "a", *args, env=env)
    assert "converting the og-marl dataset" in out.stderr
    (cached,) = (tmp_path / "cache" / "imports").iterdir()
    assert load(cached).provenance["vault"]["uid"] == "Poor"
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["dataset"]["env_id"] == "og-marl:3m"
    again = run("train", "--dataset", str(path / "Poor"), "--name", "b", *args, env=env)
    assert "converting" not in again.stderr  # the cached conversion is reused
    # An og-marl task macflow cannot run: both stages train, with no evaluation.
    steps = [line.split(",")[:3] for line in (tmp_path / "b" / "metrics.csv").read_text().split()]
    assert steps[1:] == [["10", "0", "teacher"], ["20", "0", "policy"]]


def test_data_import_command_reports_progress_and_transformations(vlt, tmp_path):
    path, _ = vlt
    out = run("data", "import", "og-marl", str(path), "--out", str(tmp_path / "o"), "--uid", "Good")
    assert "import 3m.vlt" in out.stdout and "113/113" in out.stdout  # the progress bar
    assert "dropped" in out.stdout and "repeated" in out.stdout  # transformations listed
    assert f"written to {tmp_path / 'o'}" in out.stdout
    again = ["data", "import", "og-marl", str(path), "--out", str(tmp_path / "o")]
    out = run(*again, "--uid", "Good", ok=False)
    assert out.returncode == 2 and "already holds a dataset" in out.stderr
    out = run(*again, ok=False)  # every uid, into sub-directories of a dataset: refused
    assert out.returncode == 2 and "must not be a dataset itself" in out.stderr
    out = run("data", "import", "omar", str(tmp_path / "nothing"), "--out", "y", ok=False)
    assert out.returncode == 2 and f"{tmp_path / 'nothing'}: does not exist" in out.stderr


def test_a_macflow_task_id_must_match_the_data(vlt, tmp_path):
    path, _ = vlt
    opts = ImportOptions(env_id="smax/3m", uid="Good")
    with pytest.raises(
        ValueError, match=r"--env-id smax/3m: the data do not match that task \(obs_dim 5"
    ):
        import_dataset("og-marl", path, tmp_path / "x", opts, quiet=True)
    assert not (tmp_path / "x").exists()


def test_a_macflow_dataset_survives_a_round_trip_through_a_vault_and_trains(tmp_path):
    """macflow data -> an OG-MARL-style vault (flashbax) -> import with the task's id: the arrays
    come back unchanged and `macflow train` evaluates in the task's environment."""
    from macflow.data.collect import collect
    from macflow.envs import entry

    e = entry("toy/landmarks")
    ds = collect(e.env_cls()(), e.behaviour_cls()(), 60)
    a, t, n = ds.arrays, ds.num_transitions, ds.spec.num_agents

    def per_agent(x):
        return np.repeat(np.asarray(x, np.float32)[None, :, None], n, axis=2)

    exp = {
        "observations": a["observations"][None],
        "actions": a["actions"][None],
        "rewards": per_agent(a["rewards"]),
        "terminals": per_agent(a["terminals"]),
        "truncations": per_agent(a["truncations"]),
    }
    if not ds.spec.state_is_obs_concat:
        exp["infos"] = {"state": a["states"][None]}
    uid = write_vault(tmp_path, "landmarks.vlt", "Scripted", exp)
    opts = ImportOptions(env_id="toy/landmarks", episode_limit=ds.spec.episode_limit)
    (back,) = import_dataset("og-marl", uid, tmp_path / "back", opts, quiet=True)
    assert back.spec == ds.spec  # the task's own spec, bounds included
    for name in ("observations", "states", "actions", "rewards", "terminals", "truncations"):
        np.testing.assert_array_equal(back.arrays[name], a[name], err_msg=name)
    truncated = a["truncations"][ds.ends]
    assert truncated.all()  # landmarks episodes end at the time limit
    # The one thing a vault loses: the observation after each episode, repeated here.
    np.testing.assert_array_equal(back.arrays["final_observations"], a["observations"][ds.ends])
    assert t == back.num_transitions and np.isclose(
        back.stats()["return_mean"], ds.stats()["return_mean"]
    )

    args = ["--steps", "10", "--log-every", "10", "--eval-episodes", "2", *TINY]
    run("train", "--dataset", str(tmp_path / "back"), "--out", str(tmp_path), "--name", "r", *args)
    final = json.loads((tmp_path / "r" / "final.json").read_text())
    (results, *_) = final["modes"].values()  # evaluated in toy/landmarks itself
    assert final["episodes"] == 2 * 10 and np.isfinite(results[0]["return_mean"])
