"""A run killed mid-way and restarted ends with the parameters of an uninterrupted run."""

import json
import os

from research import workdir as workdir_lib
from tests import helpers
from tests.helpers import REPO_ROOT, load_config, run_experiment

CONFIG_PATH = os.path.join(REPO_ROOT, "experiments/image_classification/configs/mnist1d_cnn.py")
OVERRIDES = {
    "batch_size": 32,
    "num_train_steps": 90,
    "warmup_steps": 10,
    "log_every_steps": 10,
    "eval_every_steps": 30,
    "checkpoint_every_steps": 20,
}
KILL_AT_STEP = 53


def test_killed_and_restarted_run_matches_uninterrupted_run(data_dir, tmp_path):
    config = load_config(CONFIG_PATH, **OVERRIDES)
    config.data_dir = data_dir
    uninterrupted = run_experiment(config, tmp_path / "uninterrupted")

    workdir = tmp_path / "interrupted"
    # Dies like `kill -9` (no clean-up, checkpoint writes cut off) at the batch of that step.
    died = helpers.run_module(
        "tests.fault_runner", CONFIG_PATH, json.dumps(OVERRIDES), data_dir, str(workdir),
        "kill_in_training", str(KILL_AT_STEP),
    )  # fmt: skip
    assert died.returncode == 137, died.stderr[-3000:]
    assert not (workdir / workdir_lib.SUMMARY_FILE).exists()
    saved = [int(n) for n in os.listdir(workdir / workdir_lib.CHECKPOINT_DIR) if n.isdigit()]
    assert max(saved) <= 40  # the restart has steps to redo

    resumed = run_experiment(config, workdir)
    assert resumed["params_sha256"] == uninterrupted["params_sha256"]
    assert resumed["test"] == uninterrupted["test"]
    # The metrics of the lost steps were written again, not twice.
    records = [(r["step"], r["split"]) for r in workdir_lib.read_metrics(workdir)]
    expected = [
        (r["step"], r["split"]) for r in workdir_lib.read_metrics(tmp_path / "uninterrupted")
    ]
    assert records == expected
