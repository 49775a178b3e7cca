"""The device mesh: the same run on 1, 2, 4 and 8 simulated CPU devices, fully sharded
data parallelism (FSDP), and checkpoints restored onto another mesh."""

import json
import os

import numpy as np
import pytest

from research.runtime import workdir as workdir_lib
from tests import helpers
from tests.helpers import REPO_ROOT

CNN_CONFIG = os.path.join(REPO_ROOT, "experiments/image_classification/configs/mnist1d_cnn.py")
MLP_CONFIG = os.path.join(REPO_ROOT, "experiments/image_classification/configs/mnist1d_mlp.py")
RESNET_CONFIG = os.path.join(
    REPO_ROOT, "experiments/image_classification/configs/cifar10_resnet.py"
)
SCAN_CONFIG = os.path.join(REPO_ROOT, "experiments/seq2seq/configs/scan_transformer.py")
OVERRIDES = {
    "batch_size": 32,
    "eval_batch_size": 96,  # 1000 test examples: the last batch is padded
    "num_train_steps": 6,
    "warmup_steps": 1,
    "log_every_steps": 1,
    "eval_every_steps": 3,
    "checkpoint_every_steps": 6,
}


def _launch(workdir, config, *flags, devices=1, expect=0):
    result = helpers.launch(f"--config={config}", f"--workdir={workdir}", *flags, devices=devices)
    assert result.returncode == expect, result.stderr[-3000:]
    return result


def _train_losses(workdir) -> list[float]:
    return [r["loss"] for r in workdir_lib.read_metrics(workdir) if r["split"] == "train"]


def _summary(workdir) -> dict:
    with open(os.path.join(workdir, workdir_lib.SUMMARY_FILE)) as file:
        return json.load(file)


def _run_record(workdir) -> dict:
    return workdir_lib.read_run(str(workdir))


def test_batch_norm_and_augmentation_do_not_depend_on_the_device_count(tmp_path):
    """A ResNet (batch norm: statistics over the global batch) with random crops and flips
    (drawn per example of the global batch), on tfds mock CIFAR-10: 1 and 4 devices give
    every step's loss within 1e-5. Statistics taken per device would differ."""
    overrides = {
        "model.stage_sizes": (1, 1), "model.width": 8, "batch_size": 16, "eval_batch_size": 32,
        "num_train_steps": 8, "log_every_steps": 1, "eval_every_steps": 8,
        "checkpoint_every_steps": 8, "warmup_steps": 1,
    }  # fmt: skip
    for devices in (1, 4):
        result = helpers.run_module(
            "tests.fault_runner", RESNET_CONFIG, json.dumps(overrides), str(tmp_path / "none"),
            str(tmp_path / str(devices)), "tfds_mock_data", "40", devices=devices,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
    assert _run_record(tmp_path / "4")["mesh"] == {"data": 4, "fsdp": 1}
    one = _train_losses(tmp_path / "1")
    assert len(one) == 8
    assert _train_losses(tmp_path / "4") == pytest.approx(one, rel=1e-5)


def test_sharded_padded_evaluation_equals_numpy_over_the_whole_split(data_dir):
    result = helpers.run_module(
        "tests.sharded_evaluation", CNN_CONFIG, json.dumps(OVERRIDES), data_dir, devices=4
    )
    assert result.returncode == 0, result.stderr[-3000:]
    result = json.loads(result.stdout.strip().splitlines()[-1])
    assert result["devices"] == 4 and result["num_examples"] % OVERRIDES["eval_batch_size"]
    # Accuracy is a count over 1000 examples: exactly equal, not approximately.
    assert result["sharded"]["accuracy"] == result["numpy"]["accuracy"]
    assert result["sharded"]["loss"] == pytest.approx(result["numpy"]["loss"], rel=1e-6)


def test_the_mlp_with_dropout_gives_the_same_bits_on_1_2_4_and_8_devices(data_dir, tmp_path):
    """As a user launches, at the default logging cadence: the MNIST-1D MLP config (dropout
    0.5, `batch_groups=8`), 300 steps on 1, 2, 4 and 8 devices, ends with the same parameters
    (SHA-256) and test accuracy, and train losses within 1e-6. Dropout masks drawn per device
    (the pmap way) would differ outright; gradients summed per device, or XLA's CPU thread
    pool sized by the device count, would drift by 1e-4 of the loss by step 300."""
    flags = [f"--config.data_dir={data_dir}", "--config.num_train_steps=300"]
    for devices in (1, 2, 4, 8):
        _launch(tmp_path / str(devices), MLP_CONFIG, *flags, devices=devices)
    one = _summary(tmp_path / "1")
    threads = max(len(os.sched_getaffinity(0)), 8)
    for devices in (1, 2, 4, 8):
        record = _run_record(tmp_path / str(devices))
        assert record["mesh"] == {"data": devices, "fsdp": 1}
        assert record["cpu_threads"] == str(threads)
        other = _summary(tmp_path / str(devices))
        assert other["params_sha256"] == one["params_sha256"]
        assert other["train"]["loss"] == pytest.approx(one["train"]["loss"], rel=1e-6)
        assert other["test"]["accuracy"] == one["test"]["accuracy"]


SCAN_FLAGS = [
    "--config.scan_split=addprim_turn_left",  # the smallest test split (1208) to decode
    "--config.num_train_steps=100", "--config.batch_size=32",
    "--config.eval_batch_size=512", "--config.log_every_steps=25",
    "--config.eval_every_steps=100", "--config.checkpoint_every_steps=100",
    "--config.decode.max_length=8",  # evaluation is not what this test measures
]  # fmt: skip


def test_fsdp_shards_the_state_and_trains_like_one_device(tmp_path):
    """SCAN Transformer, fsdp=4 on 4 devices: each device holds at most 0.3 of the train
    state, and 100 steps give the losses of one device (to 2e-4: see below)."""
    data_flag = f"--config.data_dir={tmp_path / 'scan'}"
    _launch(tmp_path / "one", SCAN_CONFIG, data_flag, *SCAN_FLAGS)
    _launch(tmp_path / "fsdp", SCAN_CONFIG, data_flag, *SCAN_FLAGS, "--config.mesh.fsdp=4",
            devices=4)  # fmt: skip
    record = _run_record(tmp_path / "fsdp")
    assert record["mesh"] == {"data": 1, "fsdp": 4}
    assert record["state_bytes"] == _run_record(tmp_path / "one")["state_bytes"]
    assert record["state_bytes_per_device"] <= 0.3 * record["state_bytes"]
    # The gathers and reduce-scatters sum in another order than one device, and how far that
    # drifts by step 100 depends on the CPU's vector width: 1.5e-5 on an AMD EPYC (AVX2,
    # 2026-12-06), 7.6e-5 on an Intel Xeon with AVX-512 (2026-12-08), both runs bitwise
    # repeatable. For scale: a learning rate 10% lower moves the step-100 loss by 1.4e-2, and
    # another seed by 5e-2 (Intel Xeon, 2026-12-08).
    assert _train_losses(tmp_path / "fsdp") == pytest.approx(
        _train_losses(tmp_path / "one"), rel=2e-4
    )


# A device's memory in the test below: the MLP's train state (parameters and Adam's two
# moments, about 26 MB in float32) does not fit it.
DEVICE_BUDGET_BYTES = 16 * 2**20


def test_a_model_too_large_for_one_device_trains_when_sharded(data_dir, tmp_path):
    """An MLP whose train state exceeds DEVICE_BUDGET_BYTES, so no device could hold it
    replicated (data parallelism), trains with fsdp=4: every device's shards fit the budget,
    the losses are finite and a checkpoint is written."""
    flags = [f"--config.data_dir={data_dir}", "--config.model.hidden_sizes=(2048, 1024)"]
    flags += ["--config.num_train_steps=4", "--config.log_every_steps=2"]
    flags += ["--config.eval_every_steps=4", "--config.checkpoint_every_steps=4"]
    flags += ["--config.batch_groups=0"]  # per-block gradients need replicated parameters
    _launch(tmp_path / "sharded", MLP_CONFIG, *flags, "--config.mesh.fsdp=4", devices=4)
    record = _run_record(tmp_path / "sharded")
    assert record["state_bytes"] > DEVICE_BUDGET_BYTES  # replicated, it would not fit
    assert record["state_bytes_per_device"] <= DEVICE_BUDGET_BYTES
    assert record["state_bytes_per_device"] < 0.3 * record["state_bytes"]
    losses = _train_losses(tmp_path / "sharded")
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert os.listdir(tmp_path / "sharded" / workdir_lib.CHECKPOINT_DIR)


@pytest.mark.parametrize(
    "resume_devices, resume_flags",
    [(1, ()), (2, ()), (4, ("--config.mesh.fsdp=2",))],
    ids=["on_1_device", "on_2_devices", "on_fsdp_2"],
)
def test_a_run_killed_on_4_devices_resumes_on_another_mesh(
    resume_devices, resume_flags, data_dir, tmp_path, uninterrupted_on_4_devices
):
    """Killed (kill -9) after the step-15 checkpoint on 4 devices, finished on another mesh:
    the final train loss of the uninterrupted 4-device run, within 1e-5."""
    flags = _killed_on_4_devices(tmp_path / "run", data_dir)
    _launch(tmp_path / "run", CNN_CONFIG, *flags, *resume_flags, devices=resume_devices)
    resumed = _summary(tmp_path / "run")["train"]["loss"]
    assert resumed == pytest.approx(uninterrupted_on_4_devices["train"]["loss"], rel=1e-5)


def _killed_on_4_devices(workdir, data_dir) -> list[str]:
    """Runs FAULT_OVERRIDES on 4 devices into `workdir`, killed (kill -9) as soon as the
    step-15 checkpoint is written; returns the flags that launch the same run again."""
    overrides = {**FAULT_OVERRIDES, "data_dir": data_dir}
    died = helpers.run_module(
        "tests.fault_runner", CNN_CONFIG, json.dumps(overrides), data_dir,
        str(workdir), "kill_after_checkpoint", "15", devices=4,
    )  # fmt: skip
    assert died.returncode == 137, died.stderr[-2000:]
    saved = os.listdir(workdir / workdir_lib.CHECKPOINT_DIR)
    assert "15" in saved and "30" not in saved
    return [f"--config.{key}={value}" for key, value in overrides.items()]


FAULT_OVERRIDES = {**OVERRIDES, "num_train_steps": 30, "checkpoint_every_steps": 15}


@pytest.fixture(scope="module")
def uninterrupted_on_4_devices(data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    overrides = {**FAULT_OVERRIDES, "data_dir": data_dir}
    flags = [f"--config.{key}={value}" for key, value in overrides.items()]
    _launch(workdir, CNN_CONFIG, *flags, devices=4)
    return _summary(workdir)


def test_the_same_mesh_resumes_bitwise(data_dir, tmp_path, uninterrupted_on_4_devices):
    flags = _killed_on_4_devices(tmp_path / "run", data_dir)
    _launch(tmp_path / "run", CNN_CONFIG, *flags, devices=4)
    summary = _summary(tmp_path / "run")
    assert summary["params_sha256"] == uninterrupted_on_4_devices["params_sha256"]


@pytest.mark.parametrize(
    "flags, devices, named",
    [
        (("--config.batch_size=30",), 4, "config.batch_size=30"),
        (("--config.mesh.fsdp=3",), 4, "config.mesh"),
        (("--config.mesh.fsdp=4", "--config.model.features=(7, 7, 7)",
          "--config.model.dense_sizes=(9,)"), 4, "config.mesh.fsdp=4"),
    ],
    ids=["batch_the_devices_do_not_divide", "mesh_of_other_size", "fsdp_divides_nothing"],
)  # fmt: skip
def test_a_mesh_that_cannot_hold_the_config_is_one_sentence(
    flags, devices, named, data_dir, tmp_path
):
    result = _launch(
        tmp_path / "run", CNN_CONFIG, f"--config.data_dir={data_dir}", *flags,
        devices=devices, expect=2,
    )  # fmt: skip
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and named in error, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "run")
