"""Sweeps over a grid of config values and the report that compares their runs."""

import csv
import json
import os
import shutil
import statistics
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO_ROOT, load_config, subprocess_environment

from research.compare import report, sweep, sweep_runner

CONFIG = os.path.join(REPO_ROOT, "experiments/regression/configs/linear_synthetic.py")
GRID = "learning_rate=0.05,0.1 seed=0,1"
FINISHED = tuple(f"learning_rate={lr}_seed={seed}" for lr in ("0.05", "0.1") for seed in (0, 1))


def sweep_command(root, data_dir, *extra) -> list[str]:
    return [
        sys.executable,
        "-m",
        "research.compare.sweep",
        f"--config={CONFIG}",
        f"--root={root}",
        f"--grid={GRID}",
        "--parallel=3",  # on two cores: one runs alone, then three share them
        f"--config.data_dir={data_dir}",
        "--config.num_train_steps=20",
        "--config.eval_every_steps=10",
        "--config.log_every_steps=10",
        "--config.checkpoint_every_steps=10",
        *extra,
    ]


def run_sweep(root, data_dir, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        sweep_command(root, data_dir, *extra),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=subprocess_environment(),
    )


@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("sweep")
    result = run_sweep(root, data_dir)
    return root, result


def test_grid_key_or_value_the_config_lacks_is_one_sentence():
    config = load_config(CONFIG)
    cases = {
        "lr=0.1": "--grid key 'lr' is not a key of the config",
        "seed=0,0.5": "--grid value '0.5' of seed is not of the config's type (int",
        "learning_rate=fast": "--grid value 'fast' of learning_rate is not of the config's type",
        "model=1": "--grid key 'model' is a group of keys",
        "seed": "--grid item 'seed' is not key=value,value",
    }
    for grid, message in cases.items():
        with pytest.raises(sweep.SweepError) as error:
            sweep.parse_grid(grid, config)
        assert str(error.value).startswith(message), grid
        assert str(error.value).count(". ") == 0, grid  # one sentence


def test_bad_grid_stops_the_command_before_anything_is_written(tmp_path):
    root = tmp_path / "sweep"
    command = [
        sys.executable,
        "-m",
        "research.compare.sweep",
        f"--config={CONFIG}",
        f"--root={root}",
        "--grid=learning_rate=0.1 seed=zero",
    ]
    result = subprocess.run(
        command,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_environment(),
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --grid value 'zero' of seed is not of the config's type (int, default 0); "
        "give seed values like 0."
    ]
    assert not root.exists()


def test_plan_is_the_cross_product_and_each_point_the_config_launch_writes():
    config = load_config(CONFIG)
    grid = sweep.parse_grid("learning_rate=1e-3,3e-3 seed=0,1,2 model.hidden_sizes=(8,8)", config)
    planned = sweep.plan(CONFIG, "/sweep", grid, ["--config.num_train_steps=5"], config)
    names = [point["name"] for point in planned["points"]]
    assert names == [
        f"learning_rate={lr}_seed={seed}_model.hidden_sizes=8-8"
        for lr in ("0.001", "0.003")  # the parsed values, not their spelling
        for seed in (0, 1, 2)
    ]
    assert planned["grid"] == {
        "learning_rate": [1e-3, 3e-3],
        "seed": [0, 1, 2],
        "model.hidden_sizes": [(8, 8)],
    }
    point = planned["points"][4]
    expected = load_config(CONFIG, learning_rate=3e-3, seed=1, **{"model.hidden_sizes": (8, 8)})
    assert point["config"] == json.loads(expected.to_json_best_effort())
    assert point["command"][2:] == [
        f"--config={CONFIG}",
        "--workdir=/sweep/learning_rate=0.003_seed=1_model.hidden_sizes=8-8",
        "--config.num_train_steps=5",
        "--config.learning_rate=3e-3",
        "--config.seed=1",
        "--config.model.hidden_sizes=(8,8)",
    ]


def test_parallel_points_get_disjoint_cores_and_thread_pools_of_their_size(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4})
    assert sweep_runner.core_shares(2) == [[0, 1], [2, 3]]
    assert sweep_runner.core_shares(3) == [[0], [1], [2]]
    assert sweep_runner.core_shares(6) == [[0], [1], [2], [3], [4], [0]]
    environment = sweep_runner.environment([2, 3], "1")
    assert environment["OMP_NUM_THREADS"] == environment["TF_NUM_INTRAOP_THREADS"] == "2"
    assert environment["CUDA_VISIBLE_DEVICES"] == "1"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert sweep_runner.device_shares(2) == ["0,1", "2,3"]


def test_sweep_runs_every_point_as_a_launch_of_its_values(sweep_root):
    root, result = sweep_root
    assert result.returncode == 0, result.stderr
    record = json.loads((root / "sweep.json").read_text())
    assert record["grid"] == {"learning_rate": [0.05, 0.1], "seed": [0, 1]}
    statuses = {point["name"]: point["status"] for point in record["points"]}
    assert statuses == dict.fromkeys(FINISHED, "finished")
    for name in FINISHED:
        config = json.loads((root / name / "config.json").read_text())
        values = next(point["values"] for point in record["points"] if point["name"] == name)
        assert (config["learning_rate"], config["seed"]) == (
            values["learning_rate"],
            values["seed"],
        )
        assert config["num_train_steps"] == 20


def test_sweep_root_is_a_tensorboard_logdir_with_every_run_under_its_name(sweep_root):
    from tensorboard.backend.event_processing import event_multiplexer
    from tensorboard.util import tensor_util

    root, _ = sweep_root
    multiplexer = event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(root))
    multiplexer.Reload()
    assert set(multiplexer.Runs()) == set(FINISHED)
    for name in FINISHED:
        logged = [
            (event.step, tensor_util.make_ndarray(event.tensor_proto).item())
            for event in multiplexer.Tensors(name, "test/mse")
        ]
        records = [r for r in report.workdir_lib.read_metrics(root / name) if r["split"] == "test"]
        assert logged == [(r["step"], float(np.float32(r["mse"]))) for r in records]


def test_workdir_and_report_draw_the_recorded_metrics_through_one_curve_function(
    sweep_root, tmp_path, monkeypatch
):
    from research.compare import report_plots
    from research.runtime import curves, workdir

    root, _ = sweep_root
    drawn = []
    monkeypatch.setattr(curves, "draw", lambda panels, path, **_: drawn.append((panels, path)))
    name = FINISHED[0]
    records = report.workdir_lib.read_metrics(root / name)
    tests = [(r["step"], r["mse"]) for r in records if r["split"] == "test"]

    writer = workdir.Writer(str(tmp_path / "copy"))
    shutil.copy(root / name / workdir.METRICS_FILE, tmp_path / "copy" / workdir.METRICS_FILE)
    writer.plot_learning_curves()
    runs = [report.load_run(n, str(root / n)) for n in FINISHED]
    report_plots.draw(runs, [], "test", "mse", str(tmp_path))

    (own, own_path), (compared, compared_path) = drawn
    assert own_path == str(tmp_path / "copy" / workdir.CURVES_FILE)
    assert compared_path == str(tmp_path / report_plots.CURVES_FILE)
    assert list(own)[0] == "loss" and list(compared)[0] == "test loss"
    (line,) = [line for line in own["mse"] if line.group == "test"]
    assert list(zip(line.steps, line.values, strict=True)) == tests
    first = compared["test mse"][0]
    assert len(compared["test mse"]) == len(FINISHED)
    assert list(zip(first.steps, first.values, strict=True)) == tests


def test_report_shows_every_run_with_the_numbers_of_its_summary(sweep_root, tmp_path):
    root, _ = sweep_root
    summaries = {name: json.loads((root / name / "summary.json").read_text()) for name in FINISHED}
    records = {name: report.workdir_lib.read_metrics(root / name) for name in FINISHED}
    target = summaries[FINISHED[0]]["test"]["mse"]
    result = report.build([str(root)], str(tmp_path), {"mse": target})
    assert result["split"] == "test" and result["metric"] == "mse"
    assert result["figures"] == ["curves.png", "final_vs_swept.png"]

    with open(tmp_path / "runs.csv") as file:
        rows = {row["run"]: row for row in csv.DictReader(file)}
    assert set(rows) == set(FINISHED)
    for name, summary in summaries.items():
        row = rows[name]
        assert float(row["test mse"]) == summary["test"]["mse"]
        assert float(row["train loss"]) == summary["train"]["loss"]
        assert float(row["wall time (s)"]) == summary["wall_time_s"]
        assert float(row["steps/s"]) == summary["steps_per_second"]
        tests = [r for r in records[name] if r["split"] == "test"]
        best = min(tests, key=lambda r: r["mse"])
        assert (float(row["best test mse"]), int(row["best test mse step"])) == (
            best["mse"],
            best["step"],
        )
        reached = [r["elapsed_s"] for r in tests if r["mse"] <= target]
        assert row[f"time to test mse ≤ {target} (s)"] == (str(reached[0]) if reached else "")

    with open(tmp_path / "groups.csv") as file:
        groups = {row["learning_rate"]: row for row in csv.DictReader(file)}
    seeds = [summaries[name]["test"]["mse"] for name in FINISHED[:2]]
    assert groups["0.05"]["seeds"] == groups["0.1"]["seeds"] == "2"
    assert float(groups["0.05"]["test mse mean"]) == statistics.fmean(seeds)
    assert float(groups["0.05"]["test mse std"]) == statistics.stdev(seeds)

    page = (tmp_path / "report.html").read_text()
    assert "http" not in page and page.count("src='data:image/png;base64,") == 2
    for name, summary in summaries.items():
        assert f"<td>{name}</td>" in page
        assert f"<td>{report.format_number(summary['test']['mse'])}</td>" in page
    mean, std = statistics.fmean(seeds), statistics.stdev(seeds)
    mean_cell = f"<td>{report.format_number(mean)} ± {report.format_number(std, 2)}</td>"
    assert mean_cell in page


def test_rerun_skips_a_finished_point_and_resumes_an_interrupted_one(sweep_root, data_dir):
    root, _ = sweep_root
    interrupted = root / FINISHED[1]
    uninterrupted = json.loads((interrupted / "summary.json").read_text())
    # As if killed after its step-10 checkpoint: no summary, no later checkpoint.
    (interrupted / "summary.json").unlink()
    shutil.rmtree(interrupted / "checkpoints" / "20")
    finished = root / FINISHED[0] / "metrics.jsonl"
    finished_mtime = finished.stat().st_mtime_ns

    result = run_sweep(root, data_dir)
    assert result.returncode == 0, result.stderr
    assert finished.stat().st_mtime_ns == finished_mtime  # not launched again
    assert sorted(result.stdout.splitlines()[:4]) == sorted(
        [f"{FINISHED[1]}: finished"]
        + [f"{name}: finished before, skipped" for name in FINISHED if name != FINISHED[1]]
    )
    resumed = json.loads((interrupted / "summary.json").read_text())
    assert resumed["params_sha256"] == uninterrupted["params_sha256"]
    log = (root / "logs" / f"{FINISHED[1]}.log").read_text()
    assert "Restored the checkpoint of step 10 " in log  # resumed, not started again
    statuses = [p["status"] for p in json.loads((root / "sweep.json").read_text())["points"]]
    assert statuses == ["finished"] * 4


# Status lines printed from 8 threads at once; with `print`, which writes the text and the
# newline separately, about 1 line in 10 of these came out joined or empty.
SAY_FROM_THREADS = """
import threading
from research.compare import sweep_runner
runner = sweep_runner.Runner(".", None)
def say(i):
    for _ in range(1000):
        runner.say(f"p{i}: finished before, skipped")
threads = [threading.Thread(target=say, args=(i,)) for i in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
"""


def test_status_lines_from_parallel_points_never_interleave():
    result = subprocess.run(
        [sys.executable, "-c", SAY_FROM_THREADS],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = result.stdout.splitlines()
    assert sorted(set(lines)) == [f"p{i}: finished before, skipped" for i in range(8)]
    assert len(lines) == 8000


# A stand-in for launch.py: records its cores and thread pool size, then finishes (writes the
# config and a summary), fails, or stops after a checkpoint (exits 0 without a summary).
STAND_IN = """
import json, os, sys, time
workdir, outcome = sys.argv[1], sys.argv[2]
os.makedirs(workdir, exist_ok=True)
with open(os.path.join(os.path.dirname(workdir), "probe.jsonl"), "a") as file:
    probe = {"name": os.path.basename(workdir), "cores": sorted(os.sched_getaffinity(0)),
             "threads": os.environ["OMP_NUM_THREADS"], "start": time.time()}
    time.sleep(0.3)
    file.write(json.dumps({**probe, "end": time.time()}) + "\\n")
json.dump({"a": 1}, open(os.path.join(workdir, "config.json"), "w"))
if outcome == "finish":
    json.dump({}, open(os.path.join(workdir, "summary.json"), "w"))
if outcome == "fail":
    sys.exit("error: the data is missing; prepare it first.")
"""


def test_points_run_in_parallel_on_their_cores_and_a_failure_stops_no_other(tmp_path):
    outcomes = ("finish", "fail", "stop", "finish")
    points = [
        {"name": f"p{i}", "values": {}, "config": {"a": 1},
         "command": [sys.executable, "-c", STAND_IN, str(tmp_path / f"p{i}"), outcome]}
        for i, outcome in enumerate(outcomes)
    ]  # fmt: skip
    planned = {"config": "c", "overrides": [], "grid": {}, "points": points}
    record = sweep_runner.Record(str(tmp_path))
    record.start(planned)
    counts = sweep_runner.run_all(sweep_runner.Runner(str(tmp_path), record), planned, 2)
    assert counts == {"finished": 2, "failed": 1, "interrupted": 1}
    recorded = {p["name"]: p for p in json.loads((tmp_path / "sweep.json").read_text())["points"]}
    assert recorded["p1"]["error"] == "error: the data is missing; prepare it first."
    assert [recorded[f"p{i}"]["status"] for i in range(4)] == [
        "finished", "failed", "interrupted", "finished"]  # fmt: skip
    assert report.unfinished_points([str(tmp_path)])[0] == {
        "point": "p1", "status": "failed", "error": recorded["p1"]["error"]}  # fmt: skip

    probes = [json.loads(line) for line in (tmp_path / "probe.jsonl").read_text().splitlines()]
    shares = sweep_runner.core_shares(2)
    assert all(p["cores"] in shares and p["threads"] == str(len(p["cores"])) for p in probes)
    first = next(p for p in probes if p["name"] == "p0")
    assert all(p["start"] >= first["end"] for p in probes if p is not first)  # p0 ran alone
    if len(os.sched_getaffinity(0)) >= 2:  # points running at once hold different cores
        for a in probes:
            for b in probes:
                if a is not b and a["start"] < b["end"] and b["start"] < a["end"]:
                    assert not set(a["cores"]) & set(b["cores"])

    counts = sweep_runner.run_all(sweep_runner.Runner(str(tmp_path), record), planned, 2)
    assert counts == {"finished": 2, "failed": 1, "interrupted": 1}
    rerun = [
        json.loads(line)["name"] for line in (tmp_path / "probe.jsonl").read_text().splitlines()
    ]
    assert sorted(rerun[len(probes) :]) == ["p1", "p2"]  # finished points are not run again
