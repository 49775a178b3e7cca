"""Preemption, damaged checkpoints, divergence, failed writes and reproducing a run."""

import json
import os
import shutil
import signal
import subprocess
import time
from unittest import mock

import orbax.checkpoint as ocp
import pytest

from research.core import interval
from research.runtime import checkpoints
from research.runtime import workdir as workdir_lib
from tests import helpers
from tests.helpers import (
    REPO_ROOT,
    launch_command,
    load_config,
    run_experiment,
    subprocess_environment,
)

CNN = os.path.join(REPO_ROOT, "experiments/image_classification/configs/mnist1d_cnn.py")
LINEAR = os.path.join(REPO_ROOT, "experiments/regression/configs/linear_synthetic.py")
CNN_OVERRIDES = {
    "batch_size": 32,
    "num_train_steps": 1500,
    "warmup_steps": 10,
    "log_every_steps": 10,
    "eval_every_steps": 500,
    "checkpoint_every_steps": 500,
}


def _flags(overrides, data_dir):
    return [f"--config.{key}={value}" for key, value in overrides.items()] + [
        f"--config.data_dir={data_dir}"
    ]


def _cnn_config(data_dir, **changes):
    config = load_config(CNN, **{**CNN_OVERRIDES, **changes})
    config.data_dir = data_dir
    return config


def test_sigterm_saves_a_checkpoint_and_the_rerun_matches_an_uninterrupted_run(data_dir, tmp_path):
    workdir = tmp_path / "preempted"
    command = launch_command(
        f"--config={CNN}", f"--workdir={workdir}", *_flags(CNN_OVERRIDES, data_dir)
    )
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, env=subprocess_environment(), cwd=REPO_ROOT
    )
    metrics_path = workdir / workdir_lib.METRICS_FILE
    deadline = time.time() + 240
    while not metrics_path.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    assert "run the same command again to resume" in stderr
    assert not (workdir / workdir_lib.SUMMARY_FILE).exists()
    saved = [int(n) for n in os.listdir(workdir / workdir_lib.CHECKPOINT_DIR) if n.isdigit()]
    assert len(saved) == 1 and 10 <= saved[0] < CNN_OVERRIDES["num_train_steps"]

    resumed = helpers.run_command(command)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    with open(workdir / workdir_lib.SUMMARY_FILE) as file:
        resumed_summary = json.load(file)
    uninterrupted = run_experiment(_cnn_config(data_dir), tmp_path / "uninterrupted")
    assert resumed_summary["params_sha256"] == uninterrupted["params_sha256"]


def test_unreadable_latest_checkpoint_is_set_aside_and_the_previous_one_restored(
    data_dir, tmp_path
):
    config = _cnn_config(data_dir, num_train_steps=60, checkpoint_every_steps=20)
    finished = run_experiment(config, tmp_path / "reference")
    workdir = tmp_path / "damaged"
    shutil.copytree(tmp_path / "reference", workdir)
    os.remove(workdir / workdir_lib.SUMMARY_FILE)
    # Damage every data file of the newest checkpoint (as a truncated copy would).
    latest = workdir / workdir_lib.CHECKPOINT_DIR / "60"
    for path in latest.rglob("*"):
        if path.is_file() and path.stat().st_size > 0 and "metadata" not in path.name:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    resumed = run_experiment(config, workdir)
    assert (workdir / checkpoints.CORRUPT_DIR / "60").is_dir()
    assert resumed["params_sha256"] == finished["params_sha256"]


def test_nonfinite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(data_dir, tmp_path):
    config = load_config(
        LINEAR,
        optimizer="sgd",
        learning_rate=1e6,
        schedule="constant",
        num_train_steps=40,
        log_every_steps=10,
        checkpoint_every_steps=1,
    )
    config.data_dir = data_dir
    with pytest.raises(interval.TrainingDivergedError, match=r"at step (\d+);") as error:
        run_experiment(config, tmp_path)
    bad_step = int(error.value.args[0].split("at step ")[1].split(";")[0])
    kept = sorted(int(n) for n in os.listdir(tmp_path / "checkpoints") if n.isdigit())
    assert kept and max(kept) < bad_step


def test_skip_nonfinite_steps_finishes_with_finite_parameters(data_dir, tmp_path):
    config = load_config(
        LINEAR,
        optimizer="sgd",
        learning_rate=1e6,
        schedule="constant",
        num_train_steps=20,
        log_every_steps=10,
        skip_nonfinite_steps=True,
    )
    config.data_dir = data_dir
    summary = run_experiment(config, tmp_path)
    assert summary["final_step"] == 20
    state = checkpoints.Checkpointer(tmp_path / "checkpoints", keep=3)
    assert state.latest_step() == 20


def test_failed_checkpoint_write_is_reported_and_earlier_checkpoints_stay(data_dir, tmp_path):
    config = load_config(LINEAR, num_train_steps=30, checkpoint_every_steps=10, log_every_steps=10)
    config.data_dir = data_dir
    original_save = ocp.CheckpointManager.save

    def save_until_disk_is_full(manager, step, *args, **kwargs):
        if step >= 20:
            raise OSError(28, "No space left on device")
        return original_save(manager, step, *args, **kwargs)

    with (
        mock.patch.object(ocp.CheckpointManager, "save", save_until_disk_is_full),
        pytest.raises(checkpoints.CheckpointError, match="step 20 .*No space left"),
    ):
        run_experiment(config, tmp_path)
    kept = sorted(int(n) for n in os.listdir(tmp_path / "checkpoints") if n.isdigit())
    assert kept == [10]
    summary = run_experiment(config, tmp_path)  # resumes from step 10 once there is space
    assert summary["final_step"] == 30


def test_reproduce_reports_a_match_and_the_first_differing_step(data_dir, tmp_path):
    original = tmp_path / "original"
    flags = _flags({"num_train_steps": 40, "log_every_steps": 10, "eval_every_steps": 20}, data_dir)
    first = helpers.launch(f"--config={LINEAR}", f"--workdir={original}", *flags)
    assert first.returncode == 0, first.stderr[-3000:]
    again = helpers.launch(f"--reproduce={original}", f"--workdir={tmp_path / 'again'}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Reproduced: params_sha256" in again.stdout

    # Alter the recorded loss of step 20: the rerun must point at step 20.
    records = workdir_lib.read_metrics(original)
    with open(original / workdir_lib.METRICS_FILE, "w") as file:
        for record in records:
            if record["step"] == 20 and record["split"] == "train":
                record["loss"] *= 1.001
            file.write(json.dumps(record) + "\n")
    different = helpers.launch(f"--reproduce={original}", f"--workdir={tmp_path / 'third'}")
    assert different.returncode == 1
    assert "metrics first differ at step 20 (train loss" in different.stdout


def test_reproduce_says_when_the_init_from_checkpoint_changed_since_the_original(tmp_path):
    from research.runtime import reproduce

    for name, started_from in (("original", "a" * 64), ("rerun", "b" * 64)):
        workdir = tmp_path / name
        workdir.mkdir()
        (workdir / workdir_lib.SUMMARY_FILE).write_text(json.dumps({"params_sha256": "c" * 64}))
        (workdir / workdir_lib.METRICS_FILE).write_text(
            json.dumps({"step": 1, "split": "train", "loss": 0.5}) + "\n"
        )
        source = {"workdir": "/runs/pretrain", "step": 4, "params_sha256": started_from}
        (workdir / workdir_lib.RUN_FILE).write_text(json.dumps({"initialized_from": source}))
    report = reproduce.compare(str(tmp_path / "original"), str(tmp_path / "rerun"))
    assert report["params_match"] and report["metrics_match"] and not report["init_from_match"]
    assert reproduce.describe(report).splitlines() == [
        "NOT reproduced:",
        f"  the --init_from checkpoint /runs/pretrain@4 has changed since the original run "
        f"started from it (params_sha256 {'b' * 64} != recorded {'a' * 64}), so the rerun did "
        "not start from the same parameters",
    ]
