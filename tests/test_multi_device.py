"""Data parallelism over 2 and 4 simulated CPU devices gives the results of 1 device."""

import json
import os
import subprocess
import sys

import pytest

from research import workdir as workdir_lib
from tests.conftest import REPO_ROOT, load_config, run_experiment, subprocess_environment

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

TRAIN_SCRIPT = """
import json, sys
from tests.conftest import load_config, run_experiment
config = load_config(sys.argv[1], **json.loads(sys.argv[2]))
config.data_dir = sys.argv[3]
run_experiment(config, sys.argv[4])
"""

EVAL_SCRIPT = """
import json, sys
import jax, numpy as np, optax
from tests.conftest import load_config
from experiments.image_classification import task as task_module
from research import evaluation, optimizers, parallel, steps
import functools
config = load_config(sys.argv[1], **json.loads(sys.argv[2]))
config.data_dir = sys.argv[3]
task = task_module.get_task(config)
dataset = task.load_data(config, "unused")
model = task.create_model(config, dataset.info)
example = {k: v[:1] for k, v in dataset.train.items()}
state = steps.create_train_state(
    jax.random.PRNGKey(1), model, task, example, optimizers.create_optimizer(config))
p_eval = parallel.pmap(functools.partial(steps.eval_step, model=model, task=task))
sharded = evaluation.metrics_of_split(
    p_eval, parallel.replicate(state), dataset.eval_splits["test"], config.eval_batch_size, task)
test = dataset.eval_splits["test"]
logits = np.asarray(model.apply({"params": state.params}, test["inputs"], train=False),
                    dtype=np.float64)
log_probs = logits - logits.max(-1, keepdims=True)
log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
numpy_metrics = {
    "accuracy": float(np.mean(logits.argmax(-1) == test["label"])),
    "loss": float(-np.mean(log_probs[np.arange(len(test["label"])), test["label"]])),
}
print(json.dumps({"devices": jax.local_device_count(), "sharded": sharded,
                  "numpy": numpy_metrics, "num_examples": len(test["label"])}))
"""


def _run_script(script, *arguments, device_count):
    result = subprocess.run(
        [sys.executable, "-c", script, *arguments],
        capture_output=True,
        text=True,
        env=subprocess_environment(device_count),
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("device_count", [2, 4])
def test_more_devices_give_the_losses_of_one_device(device_count, data_dir, tmp_path):
    """Same global batch, same examples in the same order: same metrics to 1e-5."""
    _run_script(
        TRAIN_SCRIPT,
        CONFIG_PATH,
        json.dumps(OVERRIDES),
        data_dir,
        str(tmp_path / "four"),
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
    output = _run_script(EVAL_SCRIPT, CONFIG_PATH, json.dumps(OVERRIDES), data_dir, device_count=4)
    result = json.loads(output.strip().splitlines()[-1])
    assert result["devices"] == 4 and result["num_examples"] % OVERRIDES["eval_batch_size"]
    # Accuracy is a count over 1000 examples: exactly equal, not approximately.
    assert result["sharded"]["accuracy"] == result["numpy"]["accuracy"]
    assert result["sharded"]["loss"] == pytest.approx(result["numpy"]["loss"], rel=1e-6)
