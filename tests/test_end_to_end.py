"""A few steps of every config, on embedded or mock data, the workdir they leave, and goldens.

Each short run's metrics are compared with a golden curve stored in tests/golden/ (see
`conftest.check_golden`).
"""

import json
import os
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from research.runtime import workdir as workdir_lib
from tests.helpers import REPO_ROOT, check_golden, load_config, run_experiment

SHORT_RUN = {
    "num_train_steps": 12,
    "eval_every_steps": 6,
    "log_every_steps": 4,
    "checkpoint_every_steps": 4,
    "keep_checkpoints": 2,
    "warmup_steps": 2,
}
CONFIGS = {
    "regression/configs/linear_synthetic.py": {},
    "regression/configs/diabetes_linear.py": {},
    "regression/configs/diabetes_mlp.py": {},
    "regression/configs/breast_cancer_logistic.py": {},
    "image_classification/configs/mnist1d_mlp.py": {"batch_size": 32, "eval_batch_size": 256},
    "image_classification/configs/mnist1d_cnn.py": {"batch_size": 32, "eval_batch_size": 256},
    "image_classification/configs/mnist1d_multi_label.py": {
        "batch_size": 32,
        "eval_batch_size": 256,
    },
}
MOCK_CONFIGS = {  # real tfds datasets, replaced by tfds.testing.mock_data
    "image_classification/configs/fashion_mnist_cnn.py": {},
    "image_classification/configs/fashion_mnist_small_cnn.py": {},
    "image_classification/configs/mnist_cnn.py": {},
    "image_classification/configs/cifar10_resnet.py": {
        "model.stage_sizes": (1, 1),
        "model.width": 8,
    },
}


def _config(name, data_dir, overrides):
    path = os.path.join(REPO_ROOT, "experiments", name)
    config = load_config(path, **SHORT_RUN, **overrides)
    config.data_dir = data_dir
    return config


def _check_workdir(workdir, config, summary):
    with open(workdir / workdir_lib.CONFIG_FILE) as file:
        assert json.load(file) == json.loads(config.to_json_best_effort())
    with open(workdir / workdir_lib.RUN_FILE) as file:
        run = json.load(file)
    assert set(run["versions"]) >= {"jax", "jaxlib", "flax", "optax", "tensorflow-datasets"}
    assert run["devices"]["device_count"] == 1 and run["devices"]["process_count"] == 1
    assert re.fullmatch(r"[0-9a-f]{64}", run["data_fingerprint"])
    records = workdir_lib.read_metrics(workdir)
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    test_steps = [r["step"] for r in records if r["split"] == "test"]
    assert train_steps == [4, 8, 12] and test_steps == [6, 12]
    assert all(isinstance(r["loss"], float) for r in records)
    with open(workdir / workdir_lib.SUMMARY_FILE) as file:
        assert json.load(file) == json.loads(json.dumps(summary))
    assert summary["test"] == {
        k: v for k, v in records[-1].items() if k not in ("step", "split", workdir_lib.ELAPSED)
    }
    assert re.fullmatch(r"[0-9a-f]{64}", summary["params_sha256"])
    assert summary["wall_time_s"] > 0 and summary["steps_per_second"] > 0
    # elapsed_s runs on the clock of wall_time_s, which ends after the last record.
    elapsed = [r[workdir_lib.ELAPSED] for r in records]
    assert elapsed == sorted(elapsed) and 0 < elapsed[-1] <= summary["wall_time_s"]
    assert (workdir / workdir_lib.CURVES_FILE).stat().st_size > 1000
    # TensorBoard holds every record's metrics, as float32 scalars at the record's step.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(workdir), size_guidance={"tensors": 0})
    events.Reload()
    logged = {
        (tag, event.step): event.tensor_proto.float_val[0]
        for tag in events.Tags()["tensors"]
        for event in events.Tensors(tag)
    }
    expected = {
        (f"{r['split']}/{name}", r["step"]): np.float32(value)
        for r in records
        for name, value in r.items()
        if name not in ("step", "split", workdir_lib.ELAPSED)  # TensorBoard has its wall time
    }
    assert logged == expected
    kept = sorted(int(n) for n in os.listdir(workdir / workdir_lib.CHECKPOINT_DIR) if n.isdigit())
    assert kept == [8, 12]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_runs_end_to_end_and_fills_the_workdir(name, data_dir, tmp_path):
    config = _config(name, data_dir, CONFIGS[name])
    summary = run_experiment(config, tmp_path)
    _check_workdir(tmp_path, config, summary)
    check_golden(name, tmp_path)
    if config.get("loss") == "binary_cross_entropy" and config.task == "regression":
        assert {"log_loss", "roc_auc", "sklearn_log_loss", "sklearn_roc_auc"} <= set(
            summary["test"]
        )
    elif config.get("loss") == "binary_cross_entropy":
        assert 0.0 <= summary["test"]["mean_average_precision"] <= 1.0
    elif config.task == "regression":
        assert {"mse", "r2", "closed_form_mse", "closed_form_r2"} <= set(summary["test"])
    else:
        assert 0.0 <= summary["test"]["accuracy"] <= 1.0


@pytest.mark.parametrize("name", sorted(MOCK_CONFIGS))
def test_config_runs_end_to_end_on_mock_data(name, tmp_path):
    config = _config(name, str(tmp_path / "no_data_here"), MOCK_CONFIGS[name])
    config.batch_size, config.eval_batch_size = 16, 32
    with tfds.testing.mock_data(num_examples=40):
        summary = run_experiment(config, tmp_path / "run")
    _check_workdir(tmp_path / "run", config, summary)
    check_golden(name, tmp_path / "run")


def test_linear_regression_reaches_the_closed_form(data_dir, tmp_path):
    config = _config("regression/configs/linear_synthetic.py", data_dir, {})
    config.num_train_steps, config.eval_every_steps = 400, 400
    summary = run_experiment(config, tmp_path)
    test = summary["test"]
    assert test["mse"] == pytest.approx(test["closed_form_mse"], rel=1e-3)
    assert test["r2"] == pytest.approx(test["closed_form_r2"], rel=1e-4)


def test_rerun_of_finished_run_in_same_workdir_keeps_its_result(data_dir, tmp_path):
    config = _config("regression/configs/diabetes_linear.py", data_dir, {})
    first = run_experiment(config, tmp_path)
    again = run_experiment(config, tmp_path)
    assert again["params_sha256"] == first["params_sha256"]
    assert again["test"] == first["test"]


def test_workdir_of_a_different_config_is_refused_and_left_untouched(data_dir, tmp_path):
    config = _config("regression/configs/diabetes_linear.py", data_dir, {})
    run_experiment(config, tmp_path)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    config.learning_rate = 0.01
    with pytest.raises(workdir_lib.WorkdirError, match="learning_rate"):
        run_experiment(config, tmp_path)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_the_final_metrics_table_keeps_its_columns_apart():
    """Names longer than a fixed column width ran into their neighbours
    ("lossngram7_bits_per_byte"); each column is as wide as its longest entry."""
    from research.core.trainer import metrics_table

    table = metrics_table(
        {"test": {"loss": 1.25, "ngram7_bits_per_byte": 1.468}, "valid_averaged": {"loss": 2.0}}
    )
    header, *rows = table.splitlines()
    assert header.split() == ["split", "loss", "ngram7_bits_per_byte"]
    assert [row.split() for row in rows] == [
        ["test", "1.25", "1.468"],
        ["valid_averaged", "2", "nan"],
    ]
