"""Nothing a user does loses or silently changes a run: restores, --init_from, --overwrite,
concurrent launches, metrics records, --reproduce and bad inputs."""

import dataclasses
import importlib
import json
import os
import subprocess
import sys
import time

import pytest

from research.core import trainer
from research.runtime import checkpoints
from research.runtime import workdir as workdir_lib
from tests import helpers
from tests.helpers import (
    REPO_ROOT,
    load_config,
    run_experiment,
    subprocess_environment,
)

LINEAR = os.path.join(REPO_ROOT, "experiments/regression/configs/linear_synthetic.py")
SHORT = {"num_train_steps": 20, "log_every_steps": 10, "eval_every_steps": 20}
SHORT_FLAGS = [f"--config.{key}={value}" for key, value in SHORT.items()]


def _config(data_dir, **changes):
    config = load_config(LINEAR, **{**SHORT, "checkpoint_every_steps": 10, **changes})
    config.data_dir = data_dir
    return config


def _snapshot(folder) -> dict:
    """Every path under `folder` with its size and modification time."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
    }


def _other_model_task(config):
    """The task of `config` whose model has a hidden layer: same config, other parameters."""
    task = importlib.import_module("experiments.regression.task")
    base = task.get_task(config)

    def create_model(info):
        model = base.create_model(info)
        return model.clone(hidden_sizes=(7,))

    return dataclasses.replace(base, create_model=create_model)


def _launch(*arguments, timeout=300):
    return helpers.launch(*arguments, timeout=timeout)


def test_checkpoint_of_another_model_stops_the_launch_and_stays(data_dir, tmp_path):
    config = _config(data_dir)
    run_experiment(config, tmp_path)
    before = _snapshot(tmp_path)
    with pytest.raises(checkpoints.CheckpointMismatchError) as error:
        trainer.train_and_evaluate(config, str(tmp_path), _other_model_task(config))
    message = str(error.value)
    assert "(params/Dense_0/bias is (1,) in the checkpoint but (7,) in this model)" in message
    assert "new --workdir" in message and message.count(". ") == 0
    assert _snapshot(tmp_path) == before  # nothing moved, nothing appended
    assert not (tmp_path / checkpoints.CORRUPT_DIR).exists()


def test_init_from_reads_the_other_run_without_writing_to_it(data_dir, tmp_path):
    source = tmp_path / "source"
    run_experiment(_config(data_dir), source)
    before = _snapshot(source)
    config = _config(data_dir, learning_rate=0.01)
    summary = trainer.train_and_evaluate(
        config, str(tmp_path / "tuned"), importlib.import_module(
            "experiments.regression.task").get_task(config), init_from=str(source)
    )  # fmt: skip
    assert summary["final_step"] == 20
    # Another model: refused with the parameter named, the source still untouched.
    with pytest.raises(checkpoints.CheckpointMismatchError, match=r"Dense_0/bias is \(1,\)"):
        trainer.train_and_evaluate(
            config, str(tmp_path / "other"), _other_model_task(config), init_from=str(source)
        )
    assert _snapshot(source) == before
    assert not (tmp_path / "other").exists()  # a failed launch leaves no workdir
    missing = tmp_path / "missing"
    with pytest.raises(workdir_lib.WorkdirError, match="holds no checkpoints"):
        run_experiment_with_init(config, tmp_path / "third", missing)
    assert not missing.exists()


def run_experiment_with_init(config, workdir, init_from):
    task = importlib.import_module("experiments.regression.task").get_task(config)
    return trainer.train_and_evaluate(config, str(workdir), task, init_from=str(init_from))


def test_overwrite_keeps_the_old_run_until_the_new_one_starts(data_dir, tmp_path):
    workdir = tmp_path / "run"
    first = _launch(
        f"--config={LINEAR}", f"--workdir={workdir}", f"--config.data_dir={data_dir}", *SHORT_FLAGS
    )
    assert first.returncode == 0, first.stderr[-2000:]
    before = _snapshot(workdir)
    # A new config whose data cannot be loaded: the old run must survive --overwrite.
    failed = _launch(
        f"--config={LINEAR}", f"--workdir={workdir}", "--overwrite", *SHORT_FLAGS,
        f"--config.data_dir={data_dir}", "--config.dataset=no_such_dataset",
    )  # fmt: skip
    assert failed.returncode != 0
    assert _snapshot(workdir) == before
    replaced = _launch(
        f"--config={LINEAR}", f"--workdir={workdir}", "--overwrite", *SHORT_FLAGS,
        f"--config.data_dir={data_dir}", "--config.learning_rate=0.01",
    )  # fmt: skip
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    assert "--overwrite removed the earlier run's" in replaced.stderr
    assert json.loads((workdir / workdir_lib.CONFIG_FILE).read_text())["learning_rate"] == 0.01
    records = workdir_lib.read_metrics(workdir)
    assert len(records) == len({(r["step"], r["split"]) for r in records})


def test_a_workdir_in_use_is_refused_and_a_dead_holders_lock_is_taken_over(data_dir, tmp_path):
    workdir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-m", "tests.hold_lock", str(workdir)],
        stdout=subprocess.PIPE,
        text=True,
        env=subprocess_environment(),
        cwd=REPO_ROOT,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.time()
        with pytest.raises(workdir_lib.WorkdirError, match=f"in use by pid {holder.pid} on host"):
            run_experiment(_config(data_dir), workdir)
        assert time.time() - start < 10  # at once, before any data is loaded
    finally:
        holder.kill()  # like kill -9: no clean-up
        holder.wait()
    assert run_experiment(_config(data_dir), workdir)["final_step"] == 20


def test_metrics_survive_a_half_written_line_and_a_relaunch(data_dir, tmp_path):
    config = _config(data_dir, num_train_steps=30)
    first = run_experiment(config, tmp_path)
    metrics = tmp_path / workdir_lib.METRICS_FILE
    records = workdir_lib.read_metrics(tmp_path)
    # Power loss while appending: the last line is cut off.
    with open(metrics, "a") as file:
        file.write('{"step": 30, "split": "tra')
    again = run_experiment(config, tmp_path)  # a finished run, launched again
    assert again["params_sha256"] == first["params_sha256"]
    relaunched = workdir_lib.read_metrics(tmp_path)
    keys = [(r["step"], r["split"]) for r in relaunched]
    assert keys == [(r["step"], r["split"]) for r in records]  # nothing twice, nothing lost


def test_reproduce_twice_matches_and_an_unfinished_run_is_refused(data_dir, tmp_path):
    original = tmp_path / "original"
    flags = [f"--config.data_dir={data_dir}", *SHORT_FLAGS]
    assert _launch(f"--config={LINEAR}", f"--workdir={original}", *flags).returncode == 0
    for _ in range(2):  # the second time, the reproduced workdir holds a finished run
        result = _launch(f"--reproduce={original}")
        assert result.returncode == 0, result.stderr[-2000:] + result.stdout
        assert "Reproduced" in result.stdout
    # The original relaunched after it finished still reproduces.
    assert _launch(f"--config={LINEAR}", f"--workdir={original}", *flags).returncode == 0
    assert _launch(f"--reproduce={original}").returncode == 0
    (original / workdir_lib.SUMMARY_FILE).unlink()
    unfinished = _launch(f"--reproduce={original}", f"--workdir={tmp_path / 'never'}")
    assert unfinished.returncode == 2
    assert "did not finish" in unfinished.stderr
    assert not (tmp_path / "never").exists()


def test_unusable_workdir_is_one_sentence_before_any_work(tmp_path):
    a_file = tmp_path / "workdir"
    a_file.write_text("not a folder")
    # /proc cannot be written, not even by root (who may write to any chmod-ed folder).
    for workdir, words in ((a_file, "is a file"), ("/proc/research-run", "cannot be written")):
        result = _launch(f"--config={LINEAR}", f"--workdir={workdir}", timeout=60)
        assert result.returncode == 2
        assert words in result.stderr.strip().splitlines()[-1]
    assert a_file.read_text() == "not a folder"


FOLDER_CONFIG = os.path.join(
    REPO_ROOT, "experiments/seq2seq/configs/translate_folder_transformer.py"
)


def _small_folder(tmp_path, with_2017=True):
    from tests import helpers

    folder = helpers.write_parallel_folder(tmp_path / "corpus")
    if not with_2017:
        for path in folder.glob("test_2017_flickr.*"):
            path.unlink()
    return folder


@pytest.mark.parametrize(
    "case, words",
    [
        ("data_dir_is_a_file", "config.data_dir="),
        ("missing_eval_split", "config.eval_splits asks for test_2017_flickr"),
        ("shared_embeddings_with_word_vocabularies", "config.model.share_embeddings"),
        ("vocabulary_too_large", "--config.tokenizer.vocab_size=5000 is more than"),
        ("negative_seed", "config.seed is -1"),
        ("infinite_learning_rate", "config.learning_rate is inf"),
    ],
)
def test_bad_input_is_one_sentence_and_leaves_no_workdir(case, words, tmp_path):
    workdir = tmp_path / "run"
    config, flags = FOLDER_CONFIG, [f"--config.tokenizer.cache_dir={tmp_path / 'cache'}"]
    if case == "data_dir_is_a_file":
        (tmp_path / "a_file").write_text("")
        flags.append(f"--config.data_dir={tmp_path / 'a_file'}")
    else:
        folder = _small_folder(tmp_path, with_2017=case != "missing_eval_split")
        flags.append(f"--config.data_dir={folder}")
    flags += {
        "shared_embeddings_with_word_vocabularies": ["--config.tokenizer.type=word"],
        "vocabulary_too_large": ["--config.tokenizer.vocab_size=5000"],
        "negative_seed": ["--config.seed=-1"],
        "infinite_learning_rate": ["--config.learning_rate=inf"],
    }.get(case, ["--config.tokenizer.vocab_size=40"])
    result = _launch(f"--config={config}", f"--workdir={workdir}", *flags, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: ") and words in message, message
    assert not workdir.exists()


def test_examples_of_a_repeated_evaluation_replace_the_earlier_ones(tmp_path):
    # A finished run launched again evaluates its last step once more.
    writer = workdir_lib.Writer(str(tmp_path))
    writer.write_examples(10, "valid", [{"hypothesis": "a"}])
    writer.write_examples(20, "valid", [{"hypothesis": "b"}, {"hypothesis": "c"}])
    writer.write_examples(20, "test", [{"hypothesis": "d"}])
    writer.write_examples(20, "valid", [{"hypothesis": "e"}])
    writer.close()
    with open(tmp_path / workdir_lib.EXAMPLES_FILE) as file:
        records = [json.loads(line) for line in file]
    assert [(r["step"], r["split"], r["hypothesis"]) for r in records] == [
        (10, "valid", "a"),
        (20, "test", "d"),
        (20, "valid", "e"),
    ]
