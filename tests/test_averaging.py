"""Averaging the last checkpoints: the mean of their parameters, evaluated beside the final ones."""

import os

import jax
import numpy as np

from research.runtime import checkpoints
from research.runtime import workdir as workdir_lib
from tests.helpers import REPO_ROOT, load_config, run_experiment

CONFIG = os.path.join(REPO_ROOT, "experiments/regression/configs/diabetes_mlp.py")


def test_averaged_parameters_are_the_mean_of_the_last_checkpoints(tmp_path):
    config = load_config(
        CONFIG,
        num_train_steps=20,
        warmup_steps=0,
        log_every_steps=5,
        eval_every_steps=20,
        checkpoint_every_steps=5,
        keep_checkpoints=3,
        average_last_checkpoints=3,
    )
    summary = run_experiment(config, tmp_path)
    assert summary["averaged_checkpoints"] == [10, 15, 20]
    directory = str(tmp_path / workdir_lib.CHECKPOINT_DIR)
    final = checkpoints.restore_state(directory, 20, _like(config, tmp_path))
    saved = [checkpoints.restore_state(directory, s, final).params for s in (10, 15, 20)]
    mean = jax.tree.map(
        lambda *leaves: (np.sum(np.stack(leaves).astype(np.float64), 0) / 3).astype(np.float32),
        *saved,
    )
    assert summary["averaged_params_sha256"] == workdir_lib.params_sha256(mean)
    assert summary["params_sha256"] == workdir_lib.params_sha256(final.params)
    assert summary["averaged_params_sha256"] != summary["params_sha256"]
    assert set(summary["test_averaged"]) == set(summary["test"])
    splits = {(r["step"], r["split"]) for r in workdir_lib.read_metrics(tmp_path)}
    assert (20, "test_averaged") in splits and (20, "test") in splits


def _like(config, workdir):
    """A train state of the config's model, to give restored checkpoints their structure."""
    from experiments.regression import task as regression
    from research.core import optimizers, steps

    task = regression.get_task(config)
    dataset = task.load_data(str(workdir / "unused"))
    model = task.create_model(dataset.info)
    example = {key: value[:1] for key, value in dataset.train.items()}
    return steps.create_train_state(
        jax.random.PRNGKey(0), model, task, example, optimizers.create_optimizer(config)
    )
