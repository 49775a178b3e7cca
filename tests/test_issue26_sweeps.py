"""Issue 26, items 3 and 4: a sweep point is its values; a sweep owns its runs; the report
counts seeds only over runs of one config."""

import json
import os
import subprocess
import sys
import time

from helpers import REPO_ROOT, load_config, run_module, subprocess_environment

from research.compare import sweep, sweep_runner

CONFIG = os.path.join(REPO_ROOT, "experiments/regression/configs/linear_synthetic.py")
# Zero steps: a point that is launched by mistake stops at once (launch refuses it).
OVERRIDES = ("--config.num_train_steps=0",)


def _sweep(root, grid, *extra, timeout=120):
    return run_module(
        "research.compare.sweep", f"--config={CONFIG}", f"--root={root}", f"--grid={grid}",
        *OVERRIDES, *extra, timeout=timeout,
    )  # fmt: skip


def _finished_sweep(root, grid: str) -> list[str]:
    """A sweep root whose every point finished (config.json and summary.json written)."""
    config = load_config(CONFIG, num_train_steps=0)
    planned = sweep.plan(CONFIG, str(root), sweep.parse_grid(grid, config), [*OVERRIDES], config)
    os.makedirs(root)
    sweep_runner.Record(str(root)).start(planned)
    for point in planned["points"]:
        _finish(root / point["name"], point["config"])
    return [point["name"] for point in planned["points"]]


def _finish(workdir, config: dict) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(config))
    (workdir / "summary.json").write_text("{}")


def test_a_respelled_or_reordered_grid_reuses_the_points_it_names(tmp_path):
    root = tmp_path / "sweep"
    names = _finished_sweep(root, "learning_rate=1e-3,0.01 seed=0,1")
    assert names[0] == "learning_rate=0.001_seed=0"

    result = _sweep(root, "seed=1,0 learning_rate=0.010,0.001")
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()[:4]) == sorted(
        f"{name}: finished before, skipped" for name in names
    )
    workdirs = {entry.name for entry in root.iterdir() if entry.is_dir()}
    assert workdirs == set(names)  # no duplicate workdir was made
    record = json.loads((root / "sweep.json").read_text())
    assert [point["name"] for point in record["points"]] == names


def test_a_value_given_twice_is_refused_and_a_negative_value_keeps_its_sign(tmp_path):
    result = _sweep(tmp_path / "twice", "learning_rate=1e-3,0.001 seed=0")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --grid gives learning_rate the value 0.001 twice ('1e-3' and '0.001'); list "
        "each value once."
    ]
    assert not (tmp_path / "twice").exists()

    result = _sweep(tmp_path / "signs", "learning_rate=-0.5,0.5", "--print_commands")
    assert result.returncode == 0, result.stderr
    workdirs = [arg for line in result.stdout.splitlines() for arg in line.split()
                if arg.startswith("--workdir=")]  # fmt: skip
    assert [os.path.basename(w) for w in workdirs] == ["learning_rate=-0.5", "learning_rate=0.5"]


def _fake_run(workdir, config: dict, loss: float) -> None:
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps(config))
    (workdir / "summary.json").write_text(json.dumps({"test": {"loss": loss}}))
    record = {"step": 10, "split": "test", "loss": loss, "elapsed_s": 1.0}
    (workdir / "metrics.jsonl").write_text(json.dumps(record) + "\n")


def test_report_groups_seeds_only_over_equal_configs_and_refuses_a_repeated_seed(tmp_path):
    from research.compare import report

    mlp = {"name": "mlp", "width": 8}
    runs = {
        "mlp_width=8_seed=0": ({"seed": 0, "model": mlp}, 1.0),
        "mlp_width=16_seed=1": ({"seed": 1, "model": {**mlp, "width": 16}}, 2.0),
        "linear_seed=0": ({"seed": 0, "model": {"name": "linear", "width": 8}}, 3.0),
    }
    for name, (config, loss) in runs.items():
        _fake_run(tmp_path / "runs" / name, config, loss)
    result = report.build([str(tmp_path / "runs")], str(tmp_path / "out"), {})
    assert result["groups"] == []  # no two runs are seeds of one config

    _fake_run(tmp_path / "runs" / "mlp_width=8_seed=0_again", {"seed": 0, "model": mlp}, 1.5)
    answer = run_module(
        "research.compare.report", str(tmp_path / "runs"), f"--out={tmp_path / 'out2'}"
    )
    assert answer.returncode == 2
    (line,) = answer.stderr.strip().splitlines()
    assert line.startswith("error: ") and "same config and seed" in line
    assert "mlp_width=8_seed=0 and " in line and "mlp_width=8_seed=0_again" in line


def _read_until(stream, text: str, seconds: float) -> str:
    seen, deadline = "", time.time() + seconds
    while time.time() < deadline and text not in seen:
        line = stream.readline()
        if not line:
            break
        seen += line
    return seen


def test_a_rerun_waits_for_a_point_still_running_and_a_second_sweep_is_refused(tmp_path):
    root = tmp_path / "sweep"
    config = load_config(CONFIG, num_train_steps=0, learning_rate=0.1)
    workdir = root / "learning_rate=0.1"
    workdir.mkdir(parents=True)
    environment = subprocess_environment()
    # A launch left running by a sweep killed with kill -9: it holds its workdir's lock.
    orphan = subprocess.Popen(
        [sys.executable, "-m", "tests.hold_lock", str(workdir)],
        cwd=REPO_ROOT, env=environment, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    first = None
    try:
        assert orphan.stdout.readline().strip() == "locked"
        first = subprocess.Popen(
            [sys.executable, "-m", "research.compare.sweep", f"--config={CONFIG}", f"--root={root}",
             "--grid=learning_rate=0.1", *OVERRIDES],
            cwd=REPO_ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        seen = _read_until(first.stdout, "waiting for it", 120)
        assert f"learning_rate=0.1: still running (pid {orphan.pid} " in seen, seen

        second = _sweep(root, "learning_rate=0.1")
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [
            f"error: {root} is being run by another sweep (pid {first.pid} on host "
            + second.stderr.split(f"(pid {first.pid} on host ")[1].split(")")[0]
            + "); wait for it to end, stop it, or choose another --root."
        ]

        _finish(workdir, json.loads(config.to_json_best_effort()))  # the orphan finishes
        orphan.kill()
        orphan.wait()
        stdout, stderr = first.communicate(timeout=60)
        assert first.returncode == 0, stderr
        assert "learning_rate=0.1: finished" in stdout
        record = json.loads((root / "sweep.json").read_text())
        assert record["points"][0]["status"] == "finished"
        assert not (root / "logs").exists()  # the point was never launched a second time
    finally:
        for process in (orphan, first):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


def test_a_misspelled_config_key_is_one_sentence_without_escapes(tmp_path):
    result = _sweep(tmp_path / "sweep", "seed=0,1", "--config.learnin_rate=0.1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --config.learnin_rate is not a key of the config (did you mean learning_rate?); "
        "use a key the config file sets, spelled as there."
    ]
    assert not (tmp_path / "sweep").exists()
