"""Data parallelism over 2 and 4 simulated CPU devices gives the results of 1 device."""

import json
import os

import pytest

from research import workdir as workdir_lib
from tests import helpers
from tests.helpers import REPO_ROOT, load_config, run_experiment

CONFIG_PATH = os.path.join(REPO_ROOT, "experiments/image_classification/configs/mnist1d_cnn.py")
OVERRIDES = {
    "model.dropout_rate": 0.0,  # dropout masks depend on the device layout
    "batch_size": 32,
    "eval_batch_size": 96,  # 1000 test examples: the last batch is padded
    "num_train_steps": 6,
    "warmup_steps": 1,
    "log_every_steps": 1,
    "eval_every_steps": 3,
    "checkpoint_every_steps": 6,
}


def _run(module, *arguments, device_count):
    result = helpers.run_module(module, *arguments, devices=device_count)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("device_count", [2, 4])
def test_more_devices_give_the_losses_of_one_device(device_count, data_dir, tmp_path):
    """Same global batch, same examples in the same order: same metrics to 1e-5."""
    _run(
        "tests.fault_runner",
        CONFIG_PATH,
        json.dumps(OVERRIDES),
        data_dir,
        str(tmp_path / "four"),
        "none",
        "0",
        device_count=device_count,
    )
    config = load_config(CONFIG_PATH, **OVERRIDES)
    config.data_dir = data_dir
    run_experiment(config, tmp_path / "one")
    with open(tmp_path / "four" / workdir_lib.RUN_FILE) as file:
        assert json.load(file)["devices"]["device_count"] == device_count
    four = workdir_lib.read_metrics(tmp_path / "four")
    one = workdir_lib.read_metrics(tmp_path / "one")
    assert [(r["step"], r["split"]) for r in four] == [(r["step"], r["split"]) for r in one]
    for record_four, record_one in zip(four, one, strict=True):
        assert record_four["loss"] == pytest.approx(record_one["loss"], rel=1e-5, abs=1e-6)
        if record_one["split"] == "test":
            assert record_four["accuracy"] == pytest.approx(record_one["accuracy"], abs=1e-9)


def test_sharded_padded_evaluation_equals_numpy_over_the_whole_split(data_dir):
    output = _run(
        "tests.sharded_evaluation", CONFIG_PATH, json.dumps(OVERRIDES), data_dir, device_count=4
    )
    result = json.loads(output.strip().splitlines()[-1])
    assert result["devices"] == 4 and result["num_examples"] % OVERRIDES["eval_batch_size"]
    # Accuracy is a count over 1000 examples: exactly equal, not approximately.
    assert result["sharded"]["accuracy"] == result["numpy"]["accuracy"]
    assert result["sharded"]["loss"] == pytest.approx(result["numpy"]["loss"], rel=1e-6)


def test_four_devices_at_the_default_logging_cadence_finish_like_one(data_dir, tmp_path):
    """As a user launches: hundreds of steps dispatched ahead between logs, 4 devices on a
    machine with fewer cores; the collectives must not time out, and results match 1 device."""
    flags = [f"--config={CONFIG_PATH}", f"--config.data_dir={data_dir}"]
    flags += ["--config.num_train_steps=300", "--config.batch_size=32"]
    flags += ["--config.model.dropout_rate=0.0"]  # dropout masks depend on the device layout
    for devices in (4, 1):
        result = helpers.launch(*flags, f"--workdir={tmp_path / str(devices)}", devices=devices)
        assert result.returncode == 0, result.stderr[-3000:]
    four = workdir_lib.read_metrics(tmp_path / "4")
    one = workdir_lib.read_metrics(tmp_path / "1")
    assert [(r["step"], r["split"]) for r in four] == [(r["step"], r["split"]) for r in one]
    # Summation order differs between layouts; over 300 steps it moves the loss ~1e-4.
    for record_four, record_one in zip(four, one, strict=True):
        assert record_four["loss"] == pytest.approx(record_one["loss"], rel=1e-3)
