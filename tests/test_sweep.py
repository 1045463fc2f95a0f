"""``macflow sweep`` on a real local Ray: jobs run, a killed sweep resumes without redoing
finished runs, a failing job is retried then reported, and the aggregation is right."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from macflow.aggregate import (
    cell_stats,
    interval_estimates,
    interval_table,
    markdown_table,
    seed_interval,
    stratified_bootstrap,
    write_results,
)
from macflow.data import save
from macflow.data.collect import collect
from macflow.envs import make_env
from macflow.envs.toys import CoordinationData, XorData
from macflow.sweep import SweepError, load_sweep, run_sweep

MACFLOW = str(Path(sys.executable).with_name("macflow"))

SWEEP = """
out = "{out}"
data_root = "{data}"
seeds = [0, 1]
retries = 1
train = ["--steps", "200", "--log-every", "100", "--eval-every", "0", "--checkpoint-every", "0",
         "--eval-episodes", "16", "--final-eval-factor", "1", "--batch-size", "64"]
width = [16]

[tasks]
"toy/coordination" = ["rare5", "rare30"]
"toy/xor" = ["scripted"]

[[algos]]
algo = "bc"

[[algos]]
algo = "icq"

[[algos]]
algo = "bc"
label = "broken"
task_args = {{ "toy/xor" = ["--no-such-option"] }}
"""


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Toy datasets at two 'qualities', with their true random/optimal returns as references."""
    root = tmp_path_factory.mktemp("sweep-data")
    made = {
        ("toy/coordination", "rare5"): (
            CoordinationData(rare=0.05),
            {"random": 1.0, "expert": 2.0},
        ),
        ("toy/coordination", "rare30"): (
            CoordinationData(rare=0.3),
            {"random": 1.0, "expert": 2.0},
        ),
        ("toy/xor", "scripted"): (XorData(), {"random": 0.5, "expert": 1.0}),
    }
    for (task, quality), (behaviour, ref) in made.items():
        ds = collect(make_env(task), behaviour, 2000, chunk=1000)
        ds = dataclasses.replace(ds, reference_returns=ref)
        save(ds, root / task.replace("/", "-") / quality)
    return root


def _sweep(cmd_args, **kw):
    env = os.environ | {"RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled"}
    return subprocess.Popen([MACFLOW, "sweep", *cmd_args], env=env, text=True, **kw)


def test_sweep_on_local_ray_resumes_after_kill_and_reports_failures(data_root, tmp_path):
    out = tmp_path / "sweep"
    config = tmp_path / "tiny.toml"
    config.write_text(SWEEP.format(out=out, data=data_root))
    args = [str(config), "--num-cpus", "2", "--cpus-per-job", "1", "--reps", "200"]

    # Start, wait for the first finished job, then kill the driver (SIGTERM) mid-sweep.
    proc = _sweep(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while not list(out.glob("*/final.json")):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no job finished in 5 minutes"
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    log = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, log
    assert "run the same command again to resume" in log
    finished = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/final.json")}
    assert finished
    # The killed jobs' training processes do not outlive the sweep.
    deadline = time.time() + 30
    while subprocess.run(["pgrep", "-f", f"out {out}"], capture_output=True).returncode == 0:
        assert time.time() < deadline, "training processes outlived the killed sweep"
        time.sleep(0.5)

    # Run the same command again: finished jobs are not redone, the rest complete.
    proc = _sweep(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log = proc.communicate(timeout=600)[0]
    assert proc.returncode == 1, log  # the broken variant failed
    for name, mtime in finished.items():
        assert (out / name / "final.json").stat().st_mtime_ns == mtime, f"{name} was re-run"
    record = json.loads((out / "sweep.json").read_text())
    jobs = record["jobs"]
    assert len(jobs) == 9
    for name, row in jobs.items():
        if name.endswith("xor-scripted-icq"):
            assert row["status"] == "n/a" and "continuous" in row["reason"]
        elif name == "toy-xor-scripted-bc-broken":
            assert row["status"] == "failed" and row["attempts"] == 2  # retries = 1
            assert "no-such-option" in row["error"]
        else:
            assert row["status"] == "done", (name, row)
            assert len(row["final"]["modes"]["sample"]) == 2  # both seeds
    # Aggregates: a table row per dataset, intervals for every algorithm that ran.
    results = json.loads((out / "results.json").read_text())
    assert list(results["failed"]) == ["toy-xor-scripted-bc-broken"]
    est = results["intervals"][0]
    assert est["cells"]["bc"]["all_datasets"] and len(est["cells"]["bc"]["datasets"]) == 3
    assert not est["cells"]["icq"]["all_datasets"]  # discrete only: two of three datasets
    assert (out / "iqm.png").stat().st_size > 1000
    text = (out / "results.md").read_text()
    for quality in ("rare5", "rare30", "scripted"):
        assert f"| {quality} |" in text
    assert "| n/a |" in text or "| n/a" in text
    assert "failed" in text


def _record(scores: dict, win: bool = False) -> dict:
    """A sweep record with the given per-seed normalised scores per (dataset, cell)."""
    jobs = {}
    for (task, cell), values in scores.items():
        modes = {
            m: [{"return_mean": v, "normalised_score": v} | ({"win_rate": 0.5} if win else {})
                for v in values]
            for m in ("sample", "zero")
        }  # fmt: skip
        jobs[f"{task}-{cell}"] = {
            "task": task, "quality": "q", "cell": cell, "status": "done", "command": "",
            "final": {"modes": modes},
        }  # fmt: skip
    return {"sweep": "s", "data": {}, "jobs": jobs}


def test_aggregates_match_their_definitions():
    rng = np.random.default_rng(0)
    scores = {(t, c): rng.uniform(0, 100, 5).tolist() for t in "abcd" for c in ("x", "y")}
    record = _record(scores, win=True)
    table = cell_stats(record, "sample")
    np.testing.assert_allclose(table[("a", "q")]["x"]["mean"], np.mean(scores[("a", "x")]))
    np.testing.assert_allclose(table[("a", "q")]["x"]["std"], np.std(scores[("a", "x")]))
    assert "(win 50%)" in markdown_table(record, "sample")
    # Seed bootstrap: resamples of 3 seeds; the interval spans the possible means' 2.5-97.5%.
    lo, hi = seed_interval([1.0, 2.0, 6.0], reps=4000)
    assert 1.0 <= lo < 3.0 < hi <= 6.0 and lo < 1.7 and hi > 4.5
    assert seed_interval([5.0, 5.0, 5.0]) == (5.0, 5.0)
    assert f"{np.mean(scores[('a', 'x')]):.1f} [" in interval_table(record, "sample")
    est = interval_estimates(record, "sample", reps=500)
    for cell in ("x", "y"):
        pooled = np.concatenate([scores[(t, cell)] for t in "abcd"])
        # IQM: the mean of the middle 50% of all runs x datasets.
        np.testing.assert_allclose(est["cells"][cell]["iqm"], stats.trim_mean(pooled, 0.25))
        np.testing.assert_allclose(est["cells"][cell]["mean"], pooled.mean())
        lo, hi = est["cells"][cell]["iqm_ci"]
        assert lo < est["cells"][cell]["iqm"] < hi
        assert hi - lo < 60  # 20 runs in [0, 100]: a real interval, not the whole range


def test_bad_sweep_files_name_the_file_and_field(tmp_path, data_root):
    good = SWEEP.format(out=tmp_path / "o", data=data_root)
    cases = {
        "algos[0].algo": good.replace('algo = "bc"\n\n[[algos]]\nalgo = "icq"', 'algo = "bcx"'),
        "seeds": good.replace("seeds = [0, 1]", "seeds = []"),
        "tasks.toy/xor": good.replace('"toy/xor" = ["scripted"]', '"toy/xor" = ["missing"]'),
        "colour": good + '\ncolour = "red"\n',
        "algos[3].only": good + '\n[[algos]]\nalgo = "bc"\nlabel = "x"\nonly = ["toy/xor:q"]\n',
    }
    for field, text in cases.items():
        path = tmp_path / "bad.toml"
        path.write_text(text)
        with pytest.raises(SweepError) as err:
            load_sweep(path)
        assert str(path) in str(err.value) and field in str(err.value), (field, err.value)


def test_a_record_carried_to_a_fresh_checkout_resumes_without_runs_or_datasets(tmp_path):
    """Finished jobs live in the record: without their run directories, and without their
    datasets, they stay finished; the unfinished jobs of an absent dataset wait for it."""
    root = tmp_path / "data"
    for quality, rare in (("rare5", 0.05), ("rare30", 0.3)):
        ds = collect(make_env("toy/coordination"), CoordinationData(rare=rare), 500, chunk=500)
        save(ds, root / "toy-coordination" / quality)
    config = tmp_path / "s.toml"
    fresh = tmp_path / "out"
    body = SWEEP.split("[tasks]")[0].format(out=fresh, data=root)
    config.write_text(body + '[tasks]\n"toy/coordination" = ["rare5", "rare30"]\n'
                      '[[algos]]\nalgo = "bc"\n[[algos]]\nalgo = "icq"\n')  # fmt: skip
    planned = load_sweep(config)
    assert len(planned.jobs) == 4 and not planned.missing
    final = {"modes": {m: [{"return_mean": 1.5}] for m in ("sample", "zero")}}
    jobs = {
        j.name: {"task": j.task, "quality": j.quality, "cell": j.cell, "dataset": j.dataset,
                 "status": "done", "command": j.command, "final": final}
        for j in planned.jobs
    }  # fmt: skip
    unfinished = "toy-coordination-rare30-icq"
    del jobs[unfinished]
    # Another machine: an `out` holding only the record, and one dataset gone.
    fresh.mkdir()
    record = {"sweep": str(config), "data": planned.data, "jobs": jobs}
    (fresh / "sweep.json").write_text(json.dumps(record))
    shutil.rmtree(root / "toy-coordination" / "rare30")
    planned = load_sweep(config)
    assert planned.missing == {str(root / "toy-coordination" / "rare30")}
    said = []
    result = run_sweep(planned, echo=said.append)  # nothing to run: Ray is not even started
    assert {n: r["status"] for n, r in result["jobs"].items()} == {
        n: "pending" if n == unfinished else "done" for n in [j.name for j in planned.jobs]
    }
    assert result["jobs"]["toy-coordination-rare30-bc"]["final"] == final
    assert "0 to run" in said[0] and "rare30" in said[1] and "wait" in said[1]
    assert not [p for p in fresh.iterdir() if p.is_dir()]  # no job was started
    # A dataset that is absent and unknown to the record is still an error naming the field.
    shutil.rmtree(root / "toy-coordination" / "rare5")
    (fresh / "sweep.json").write_text(json.dumps(record | {"data": {}}))
    with pytest.raises(SweepError, match=r"tasks\.toy/coordination"):
        load_sweep(config)


def test_stratified_bootstrap_is_reproducible_agrees_with_rliable_and_splits_families():
    rng = np.random.default_rng(1)
    matrix = rng.uniform(0, 100, (3, 6))  # 3 seeds x 6 datasets
    a, b = stratified_bootstrap(matrix, 3000, seed=4), stratified_bootstrap(matrix, 3000, seed=4)
    assert a == b  # the same seed gives the same intervals, to the last digit
    np.testing.assert_allclose(a["iqm"], stats.trim_mean(matrix.ravel(), 0.25))
    # The field's reference implementation (rliable, arch's stratified bootstrap) gives the same
    # intervals up to Monte-Carlo error.
    rly = pytest.importorskip("rliable.library")
    metrics = pytest.importorskip("rliable.metrics")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, ci = rly.get_interval_estimates(
            {"x": matrix},
            lambda x: np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x)]),
            reps=3000,
            random_state=np.random.RandomState(0),
        )
    np.testing.assert_allclose(a["iqm_ci"], ci["x"][:, 0], atol=2.0)
    np.testing.assert_allclose(a["mean_ci"], ci["x"][:, 1], atol=1.5)
    # Families: a table over two suites gives one estimate per suite and one over both.
    scores = {(t, c): rng.uniform(0, 100, 3).tolist() for t in ("a/1", "a/2", "b/1") for c in "xy"}
    scores[("b/1", "x")] = [100.0, 100.0, 100.0]
    record = _record(scores)
    only_b = interval_estimates(record, "sample", 200, families=("b",))
    assert only_b["datasets"] == [["b/1", "q"]] and only_b["cells"]["x"]["iqm"] == 100.0
    assert only_b["cells"]["x"]["rank"] == 1 and only_b["cells"]["y"]["rank"] == 2
    assert len(interval_estimates(record, "sample", 200)["datasets"]) == 3


def test_results_have_a_section_and_a_plot_per_family_and_the_cost(tmp_path):
    rng = np.random.default_rng(2)
    scores = {(t, c): rng.uniform(0, 100, 3).tolist() for t in ("a/1", "b/1") for c in "xy"}
    record = _record(scores)
    for i, row in enumerate(record["jobs"].values()):
        row["seconds"] = 60.0 * (i + 1)
    result = write_results(record, tmp_path, reps=100)
    assert sorted(result["families"]) == ["a", "b"]
    assert (tmp_path / "iqm-a.png").exists() and (tmp_path / "iqm-b.png").exists()
    text = (tmp_path / "results.md").read_text()
    assert "## Across the a datasets (1), sample mode" in text
    assert "In all: 10 min" in text  # 1 + 2 + 3 + 4 minutes
    # One marl-eval file of every run: environment -> task_quality -> algorithm -> run_<seed>.
    merged = json.loads((tmp_path / "marl_eval.json").read_text())
    runs = merged["a"]["1_q"]["x"]
    assert sorted(runs) == ["run_0", "run_1", "run_2"]
    got = [runs[f"run_{i}"]["absolute_metrics"]["return"][0] for i in range(3)]
    assert got == scores[("a/1", "x")] and runs["run_0"]["absolute_metrics"]["elapsed_time"] == 60


def test_a_dataset_collect_can_make_is_planned_before_it_exists(tmp_path):
    config = tmp_path / "s.toml"
    body = SWEEP.split("[tasks]")[0].format(out=tmp_path / "out", data=tmp_path / "none")
    config.write_text(body + '[tasks]\n"mpe/spread" = ["medium"]\n[[algos]]\nalgo = "bc"\n')
    planned = load_sweep(config)
    assert planned.missing == {str(tmp_path / "none" / "mpe-spread" / "medium")}
    assert "--dataset" in planned.jobs[0].argv and not planned.jobs[0].na
    said = []
    run_sweep(planned, echo=said.append)
    assert "1 job(s) wait for dataset(s)" in said[1]


def test_family_options_go_to_the_jobs_of_that_suite_only(tmp_path, data_root):
    text = SWEEP.format(out=tmp_path / "o", data=data_root)
    text = text.replace(
        "width = [16]", 'width = [16]\nfamily_train = { toy = ["--final-eval-factor", "2"] }'
    )
    text += (
        '\n[[algos]]\nalgo = "bc"\nlabel = "f"\nfamily_args = { toy = ["--agent.lr", "0.01"] }\n'
    )
    path = tmp_path / "f.toml"
    path.write_text(text)
    jobs = {j.name: j for j in load_sweep(path).jobs}
    assert all("--final-eval-factor 2" in j.command for j in jobs.values() if not j.na)
    assert "--agent.lr 0.01" in jobs["toy-xor-scripted-bc-f"].command
    for field, extra in (
        ("family_train.mpe", 'family_train = { mpe = ["--steps", "1"] }\n'),
        ("algos[3].family_args.smax", '[[algos]]\nalgo = "bc"\nfamily_args = { smax = [] }\n'),
    ):
        bad = SWEEP.format(out=tmp_path / "o", data=data_root)
        bad = extra + bad if field.startswith("family_train") else bad + "\n" + extra
        path.write_text(bad)
        with pytest.raises(SweepError, match=field.replace("[", r"\[").replace("]", r"\]")):
            load_sweep(path)
