"""Two processes x two simulated devices (gloo on 127.0.0.1) behave like one process x four."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import threading
import time

import pytest

from experiments.image_classification import datasets
from research.core import trainer
from research.runtime import parallel
from research.runtime import workdir as workdir_lib
from tests import helpers
from tests.helpers import REPO_ROOT, launch_command, subprocess_environment

CONFIG = os.path.join(REPO_ROOT, "experiments/image_classification/configs/mnist1d_cnn.py")
MLP_CONFIG = os.path.join(REPO_ROOT, "experiments/image_classification/configs/mnist1d_mlp.py")
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
    "eval_splits": "('valid',)",  # one split decoded: the others add compilations, not checks
    "eval_every_steps": 30,
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


def _start_processes(
    workdir, data_dir, overrides, count=2, config=CONFIG, extra=(), per_process=()
):
    """`count` processes of one run; each writes its output to `<workdir>.process<i>.log`.

    `per_process[i]`, if given, holds flags for process i alone.
    """
    port = _free_port()
    processes = []
    for index in range(count):
        own_flags = per_process[index] if per_process else ()
        log_path = f"{workdir}.process{index}.log"
        with open(log_path, "w") as log:  # the child keeps its own handle
            process = subprocess.Popen(
                _command(
                    workdir,
                    data_dir,
                    overrides,
                    f"--coordinator_address=127.0.0.1:{port}",
                    f"--num_processes={count}",
                    f"--process_id={index}",
                    "--heartbeat_timeout_seconds=10",
                    *extra,
                    *own_flags,
                    config=config,
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
                env=subprocess_environment(device_count=2),
                cwd=REPO_ROOT,
            )
        process.log_path = log_path
        processes.append(process)
    return processes


def _output(process) -> str:
    with open(process.log_path) as log:
        return log.read()


def _wait_for_all(processes, timeout_s=300) -> list[str]:
    """Each process's output once all have ended; if any is still running after `timeout_s`,
    all are killed and the test fails showing every process's output."""
    deadline = time.time() + timeout_s
    try:
        for process in processes:
            process.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
            process.wait()
        tails = [f"process {i}:\n{_output(p)[-3000:]}" for i, p in enumerate(processes)]
        pytest.fail(f"still running after {timeout_s} s\n" + "\n".join(tails))
    return [_output(process) for process in processes]


@pytest.mark.parametrize(
    "case", ["image_classification", "device_resident", "bucketed_translation"]
)
def test_two_processes_give_the_metrics_of_one_process_with_four_devices(case, data_dir, tmp_path):
    """The images: one process reads them into memory; the two read theirs through Grain, or
    hold the split on each device, every device finding its own rows of each global batch
    in the "hash" order, five steps per call. The images train the MNIST-1D MLP config
    (dropout, `batch_groups`), which gives the same bits."""
    config, overrides, metrics = CONFIG, OVERRIDES, ("loss", "accuracy")
    multi_data_dir, extra, pipeline = data_dir, (), None
    if case == "image_classification":
        multi_data_dir = str(tmp_path / "array_record")
        datasets.Mnist1d(data_dir=multi_data_dir, file_format="array_record").download_and_prepare()
        extra, pipeline = ("--config.input_pipeline=grain", "--config.input_workers=1"), "grain"
        config = MLP_CONFIG
    if case == "device_resident":
        overrides = {**OVERRIDES, "train_order": "hash"}
        extra = ("--config.input_pipeline=device", "--config.steps_per_dispatch=5")
        pipeline = "device"
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
    for process, output in zip(processes, _wait_for_all(processes), strict=True):
        assert process.returncode == 0, output[-3000:]
        if pipeline:
            assert f"through the {pipeline} input pipeline" in output, output[-3000:]

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
    if case == "image_classification":
        hashes = [
            json.loads((tmp_path / run / workdir_lib.SUMMARY_FILE).read_text())["params_sha256"]
            for run in ("single", "multi")
        ]
        assert hashes[0] == hashes[1]


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
    _wait_for_all(processes, timeout_s=120)
    assert processes[0].returncode != 0
    assert time.time() - killed_at < 120


def test_a_process_that_fails_with_an_error_ends_the_others_within_seconds(data_dir, tmp_path):
    """Process 1 alone is misconfigured (Grain input for a dataset prepared as TFRecords).

    It reports the mistake and leaves; process 0, which would otherwise wait at the next meeting
    point for 10 minutes, ends with an error within seconds, and no workdir is left behind.
    """
    processes = _start_processes(
        tmp_path / "run", data_dir, OVERRIDES, per_process=((), ("--config.input_pipeline=grain",))
    )
    processes[1].wait(timeout=240)
    failed_at = time.time()
    _wait_for_all(processes, timeout_s=120)
    ended_after = time.time() - failed_at
    assert processes[1].returncode == 2
    assert "prepared as TFRecord files, which the grain" in _output(processes[1])
    assert processes[0].returncode != 0, _output(processes[0])[-3000:]
    assert ended_after < 60, ended_after
    assert not (tmp_path / "run").exists()


def test_process_0_writes_the_artifacts_before_the_other_processes_read_them(monkeypatch, tmp_path):
    """Two threads stand in for two processes loading a task that learns a vocabulary from its
    data and keeps it in the run's artifacts (as the translation tokenizers are): process 1 must
    find process 0's finished file, never write its own or read a half-written one."""
    barrier, this = threading.Barrier(2), threading.local()
    monkeypatch.setattr(parallel, "process_index", lambda: this.index)
    monkeypatch.setattr(parallel, "wait_for_processes", lambda *_: barrier.wait(timeout=60))
    found = {}

    class VocabularyTask:
        def load_data(self, artifacts_dir):
            path = pathlib.Path(artifacts_dir, "vocabulary.txt")
            found[this.index] = path.read_text() if path.exists() else None
            if found[this.index] is None:
                os.makedirs(artifacts_dir, exist_ok=True)
                with open(path, "w") as file:
                    file.write("learned ")
                    time.sleep(0.5)  # slow enough for an unordered reader to catch it half-done
                    file.write("from the data")
            return this.index

    def load(index):
        this.index = index
        trainer._load_data(VocabularyTask(), str(tmp_path / "artifacts"))

    threads = [threading.Thread(target=load, args=(index,)) for index in (0, 1)]
    for thread in reversed(threads):  # process 1 starts first
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert found == {0: None, 1: "learned from the data"}


def _slurm_job_id_with_a_free_port() -> int:
    """A job id whose coordinator port (JAX: 61440 + job id % 4096) nobody listens on."""
    for job_id in range(int(time.time()) % 4096, 4096 * 3):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", 61440 + job_id % 4096))
            except OSError:
                continue
            return job_id
    raise AssertionError("no free port in 61440..65535")


def test_two_slurm_tasks_with_distributed_match_one_process_with_four_devices(data_dir, tmp_path):
    """As `srun --ntasks=2 python launch.py --distributed` starts them: each process knows only
    SLURM's environment (job id, node list, task count, its rank); JAX finds the coordinator
    (the first node, a port derived from the job id) from it."""
    overrides = {**OVERRIDES, "num_train_steps": 10, "checkpoint_every_steps": 10}
    overrides["eval_every_steps"] = 10
    single = helpers.run_command(_command(tmp_path / "single", data_dir, overrides), devices=4)
    assert single.returncode == 0, single.stderr[-3000:]
    job_id = str(_slurm_job_id_with_a_free_port())
    processes = []
    for rank in range(2):
        environment = subprocess_environment(device_count=2)
        environment.update(
            SLURM_JOB_ID=job_id, SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="2",
            SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank),
        )  # fmt: skip
        log_path = f"{tmp_path / 'multi'}.process{rank}.log"
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                _command(tmp_path / "multi", data_dir, overrides, "--distributed"),
                stdout=log, stderr=subprocess.STDOUT, text=True, env=environment, cwd=REPO_ROOT,
            )  # fmt: skip
        process.log_path = log_path
        processes.append(process)
    for process, output in zip(processes, _wait_for_all(processes), strict=True):
        assert process.returncode == 0, output[-3000:]
    record = workdir_lib.read_run(str(tmp_path / "multi"))
    assert record["devices"]["process_count"] == 2 and record["mesh"] == {"data": 4, "fsdp": 1}
    one = workdir_lib.read_metrics(tmp_path / "single")
    two = workdir_lib.read_metrics(tmp_path / "multi")
    assert [(r["step"], r["split"]) for r in two] == [(r["step"], r["split"]) for r in one]
    for record_two, record_one in zip(two, one, strict=True):
        assert record_two["loss"] == pytest.approx(record_one["loss"], rel=1e-5)
