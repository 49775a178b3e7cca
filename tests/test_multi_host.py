"""Two processes x two simulated devices (gloo on 127.0.0.1) behave like one process x four."""

import json
import os
import signal
import socket
import subprocess
import time

import pytest

from experiments.image_classification import datasets
from research import workdir as workdir_lib
from tests import helpers
from tests.helpers import REPO_ROOT, launch_command, subprocess_environment

CONFIG = os.path.join(REPO_ROOT, "experiments/image_classification/configs/mnist1d_cnn.py")
TRANSLATION_CONFIG = os.path.join(
    REPO_ROOT, "experiments/seq2seq/configs/translate_folder_transformer.py"
)
OVERRIDES = {
    "batch_size": 32,
    "eval_batch_size": 96,
    "num_train_steps": 30,
    "warmup_steps": 5,
    "log_every_steps": 5,
    "eval_every_steps": 15,
    "checkpoint_every_steps": 15,
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Length-bucketed batches of a tiny Transformer: every step's shape comes from the global batch.
TRANSLATION_OVERRIDES = {
    **OVERRIDES,
    "batch_size": 16,
    "eval_batch_size": 16,
    "tokenizer.type": "word",
    "max_input_length": 32,
    "max_target_length": 32,
    "bucket_boundaries": "(16,)",  # two shapes: 16 and the full 32
    "model.num_layers": 1,
    "model.width": 32,
    "model.num_heads": 2,
    "model.mlp_width": 64,
    "model.max_length": 32,
    "model.share_embeddings": False,  # word vocabularies differ per language
    "decode.max_length": 32,
    "decode.beam_size": 2,
}


def _command(workdir, data_dir, overrides, *extra, config=CONFIG):
    flags = [f"--config.{key}={value}" for key, value in overrides.items()]
    return launch_command(
        f"--config={config}",
        f"--workdir={workdir}",
        f"--config.data_dir={data_dir}",
        *flags,
        *extra,
    )


def _start_processes(workdir, data_dir, overrides, count=2, config=CONFIG, extra=()):
    port = _free_port()
    return [
        subprocess.Popen(
            _command(
                workdir,
                data_dir,
                overrides,
                f"--coordinator_address=127.0.0.1:{port}",
                f"--num_processes={count}",
                f"--process_id={index}",
                "--heartbeat_timeout_seconds=10",
                *extra,
                config=config,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=subprocess_environment(device_count=2),
            cwd=REPO_ROOT,
        )
        for index in range(count)
    ]


@pytest.mark.parametrize("case", ["image_classification", "bucketed_translation"])
def test_two_processes_give_the_metrics_of_one_process_with_four_devices(case, data_dir, tmp_path):
    """The images: one process reads them into memory, the two read theirs through Grain."""
    config, overrides, metrics = CONFIG, OVERRIDES, ("loss", "accuracy")
    multi_data_dir, extra = data_dir, ()
    if case == "image_classification":
        multi_data_dir = str(tmp_path / "array_record")
        datasets.Mnist1d(data_dir=multi_data_dir, file_format="array_record").download_and_prepare()
        extra = ("--config.input_pipeline=grain", "--config.input_workers=1")
    if case == "bucketed_translation":
        data_dir = multi_data_dir = str(helpers.write_parallel_folder(tmp_path / "corpus"))
        config, overrides = TRANSLATION_CONFIG, TRANSLATION_OVERRIDES
        metrics = ("loss", "token_accuracy", "bleu")
    single = helpers.run_command(
        _command(tmp_path / "single", data_dir, overrides, config=config), devices=4
    )
    assert single.returncode == 0, single.stderr[-3000:]
    processes = _start_processes(
        tmp_path / "multi", multi_data_dir, overrides, config=config, extra=extra
    )
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
        if extra:
            assert "through the grain input pipeline" in stderr, stderr[-3000:]

    with open(tmp_path / "multi" / workdir_lib.RUN_FILE) as file:
        devices = json.load(file)["devices"]
    assert devices["process_count"] == 2 and devices["device_count"] == 4
    one = workdir_lib.read_metrics(tmp_path / "single")
    two = workdir_lib.read_metrics(tmp_path / "multi")  # written by process 0 only: no repeats
    assert [(r["step"], r["split"]) for r in two] == [(r["step"], r["split"]) for r in one]
    for record_two, record_one in zip(two, one, strict=True):
        for name in metrics:
            if name in record_one:
                assert record_two[name] == pytest.approx(record_one[name], rel=1e-5), name
    checkpoints = os.listdir(tmp_path / "multi" / workdir_lib.CHECKPOINT_DIR)
    assert sorted(n for n in checkpoints if n.isdigit()) == ["15", "30"]


def test_a_dead_process_makes_the_other_exit_with_an_error(data_dir, tmp_path):
    long_run = {**OVERRIDES, "num_train_steps": 100000, "checkpoint_every_steps": 100000}
    processes = _start_processes(tmp_path / "run", data_dir, long_run)
    metrics = tmp_path / "run" / workdir_lib.METRICS_FILE
    deadline = time.time() + 240
    while not metrics.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert metrics.exists(), "training never started"
    processes[1].send_signal(signal.SIGKILL)
    killed_at = time.time()
    try:
        processes[0].communicate(timeout=120)
    except subprocess.TimeoutExpired:
        processes[0].kill()
        pytest.fail("the surviving process hung for 120 s after its peer died")
    assert processes[0].returncode != 0
    assert time.time() - killed_at < 120
