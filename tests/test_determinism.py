"""The same config and seed give bit-identical parameters and identical metrics, per task."""

import os

import pytest

from research.runtime import workdir as workdir_lib
from tests.helpers import REPO_ROOT, load_config, run_experiment

SHORT = {"num_train_steps": 8, "warmup_steps": 2, "log_every_steps": 2, "eval_every_steps": 4}
CASES = {
    "regression": ("experiments/regression/configs/diabetes_mlp.py", {}),
    "image_classification": (
        "experiments/image_classification/configs/mnist1d_cnn.py",
        {"batch_size": 32},  # with dropout: keys are folded from the seed and step
    ),
    "seq2seq": (
        "experiments/seq2seq/configs/scan_transformer.py",
        {
            "batch_size": 32,
            "model.num_layers": 1,
            "model.width": 32,
            "model.mlp_width": 64,
            "scan_split": "addprim_turn_left",  # the smallest test split
            "eval_every_steps": 8,  # one greedy decoding of its 1,208 test commands per run
        },
    ),
}


@pytest.mark.parametrize("task", sorted(CASES))
def test_same_config_and_seed_give_identical_runs(task, data_dir, tmp_path):
    path, overrides = CASES[task]
    config = load_config(os.path.join(REPO_ROOT, path), **{**SHORT, **overrides})
    config.data_dir = data_dir
    first = run_experiment(config, tmp_path / "first")
    second = run_experiment(config, tmp_path / "second")
    assert first["params_sha256"] == second["params_sha256"]

    def without_timing(workdir):
        records = workdir_lib.read_metrics(workdir)
        return [
            {k: v for k, v in r.items() if k not in workdir_lib.TIMING_METRICS} for r in records
        ]

    assert without_timing(tmp_path / "first") == without_timing(tmp_path / "second")

    config.seed += 1
    other_seed = run_experiment(config, tmp_path / "other_seed")
    assert other_seed["params_sha256"] != first["params_sha256"]
