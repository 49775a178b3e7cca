"""Evaluates a fresh model of a config on its test split, sharded over this process's devices
and in numpy over the whole split; prints both as JSON (for tests/test_multi_device.py).

    python -m tests.sharded_evaluation CONFIG OVERRIDES_JSON DATA_DIR
"""

import functools
import json
import sys

import jax
import numpy as np

import experiments
from research.core import evaluation, optimizers, steps
from research.runtime import parallel
from tests.helpers import load_config


def main() -> None:
    config_path, overrides, data_dir = sys.argv[1:]
    config = load_config(config_path, **json.loads(overrides))
    config.data_dir = data_dir
    task = experiments.get_task(config)
    dataset = task.load_data("unused")
    model = task.create_model(dataset.info)
    example = {key: value[:1] for key, value in dataset.train.items()}
    state = steps.create_train_state(
        jax.random.PRNGKey(1), model, task, example, optimizers.create_optimizer(config)
    )
    mesh = parallel.make_mesh(config.get("mesh") or {})
    eval_step = jax.jit(functools.partial(steps.eval_step, model=model, task=task))
    test = dataset.eval_splits["test"]
    sharded = evaluation.metrics_of_split(
        eval_step, parallel.put_replicated(state, mesh), test, config.eval_batch_size, task, mesh
    )
    logits = model.apply({"params": state.params}, test["inputs"], train=False)
    logits = np.asarray(logits, dtype=np.float64)
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    labels = test["label"]
    numpy_metrics = {
        "accuracy": float(np.mean(logits.argmax(-1) == labels)),
        "loss": float(-np.mean(log_probs[np.arange(len(labels)), labels])),
    }
    print(
        json.dumps(
            {
                "devices": jax.device_count(),
                "sharded": sharded,
                "numpy": numpy_metrics,
                "num_examples": len(labels),
            }
        )
    )


if __name__ == "__main__":
    main()
