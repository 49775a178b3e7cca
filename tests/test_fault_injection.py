"""Faults injected at chosen points of a run: each loses no earlier result, and the resumed run
ends with the parameters of an uninterrupted one."""

import json
import os

import numpy as np
import pytest

from research.runtime import workdir as workdir_lib
from tests import helpers
from tests.helpers import REPO_ROOT, load_config, run_experiment

LINEAR = os.path.join(REPO_ROOT, "experiments/regression/configs/linear_synthetic.py")
OVERRIDES = {
    "num_train_steps": 60,
    "warmup_steps": 5,
    "log_every_steps": 5,
    "eval_every_steps": 20,
    "checkpoint_every_steps": 10,
    "keep_checkpoints": 10,
}


def _run_with_fault(workdir, data_dir, fault: str, at_step: int = 0):
    arguments = [LINEAR, json.dumps(OVERRIDES), data_dir, str(workdir), fault, str(at_step)]
    return helpers.run_module("tests.fault_runner", *arguments)


def _checkpoints(workdir) -> list[int]:
    folder = workdir / workdir_lib.CHECKPOINT_DIR
    return sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if folder.exists() else []


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    config = load_config(LINEAR, **OVERRIDES)
    config.data_dir = data_dir
    summary = run_experiment(config, workdir)
    return summary, workdir_lib.read_metrics(workdir)


def _finish_and_compare(workdir, data_dir, uninterrupted):
    config = load_config(LINEAR, **OVERRIDES)
    config.data_dir = data_dir
    summary = run_experiment(config, workdir)
    expected_summary, expected_records = uninterrupted
    assert summary["params_sha256"] == expected_summary["params_sha256"]
    records = workdir_lib.read_metrics(workdir)
    assert [(r["step"], r["split"]) for r in records] == [
        (r["step"], r["split"]) for r in expected_records
    ]
    elapsed = [r[workdir_lib.ELAPSED] for r in records]  # the clock ran on over the restart
    assert elapsed == sorted(elapsed) and summary["wall_time_s"] >= elapsed[-1]


# Points drawn once from a fixed seed, so the "random" points are the same in every run.
KILL_STEPS = sorted(np.random.default_rng(2026).choice(np.arange(11, 60), 3, replace=False))


@pytest.mark.parametrize("at_step", [int(s) for s in KILL_STEPS])
def test_kill_9_during_training(at_step, data_dir, tmp_path, uninterrupted):
    died = _run_with_fault(tmp_path, data_dir, "kill_in_training", at_step)
    assert died.returncode == 137, died.stderr[-2000:]
    # Every checkpoint before the kill is there (one being written at the kill may be lost).
    assert set(range(10, (at_step // 10) * 10, 10)) <= set(_checkpoints(tmp_path))
    _finish_and_compare(tmp_path, data_dir, uninterrupted)


@pytest.mark.parametrize("at_step", [20, 40])
def test_kill_9_while_a_checkpoint_is_written(at_step, data_dir, tmp_path, uninterrupted):
    died = _run_with_fault(tmp_path, data_dir, "kill_in_checkpoint_write", at_step)
    assert died.returncode == 137, died.stderr[-2000:]
    assert set(range(10, at_step, 10)) <= set(_checkpoints(tmp_path))  # earlier ones intact
    _finish_and_compare(tmp_path, data_dir, uninterrupted)


def test_disk_full_while_metrics_are_written(data_dir, tmp_path, uninterrupted):
    failed = _run_with_fault(tmp_path, data_dir, "disk_full_in_metrics_write", 35)
    assert failed.returncode != 0 and "No space left on device" in failed.stderr
    assert max(_checkpoints(tmp_path)) == 30
    records = workdir_lib.read_metrics(tmp_path)
    assert max(r["step"] for r in records) == 30  # written up to the failure, readable
    _finish_and_compare(tmp_path, data_dir, uninterrupted)


@pytest.mark.parametrize("fault", ["sigterm_in_data_preparation", "sigterm_in_compilation"])
def test_sigterm_before_training_starts(fault, data_dir, tmp_path, uninterrupted):
    died = _run_with_fault(tmp_path, data_dir, "kill_in_training", 25)  # progress to keep
    assert died.returncode == 137
    before = _checkpoints(tmp_path)
    stopped = _run_with_fault(tmp_path, data_dir, fault)
    assert stopped.returncode in (0, -15), stopped.stderr[-2000:]
    assert set(before) <= set(_checkpoints(tmp_path))
    _finish_and_compare(tmp_path, data_dir, uninterrupted)
