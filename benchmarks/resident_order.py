"""The regression MLP's device-resident loop in the "numpy" order (each call's indices drawn
on the host and sent), the same with every epoch's permutation drawn before the loop, and in
the "hash" order (found on the device): how much of the host's time per call the order takes.

    .venv/bin/python benchmarks/resident_order.py numpy|precomputed|hash [STEPS]
    .venv/bin/python benchmarks/resident_order.py hash_cost

Prints examples/s of the loop and of its last log interval, and the training thread's mean
time per call in `Run.device_batches` with its share of the loop (benchmarks/NOTES.md,
"Where the regression MLP's host time goes").
"""

import dataclasses
import functools
import os
import shutil
import sys
import tempfile

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)


def hash_cost() -> None:
    """The "hash" order alone, jitted: best of 200 calls for the MLP's epochs of 353 examples
    (3200 and 32000 indices: 100 and 1000 steps of 32) and for 513 (more cycle walking)."""
    import time

    import jax
    import jax.numpy as jnp

    from research.core import data

    for n, count in ((353, 3200), (513, 3200), (353, 32000)):
        draw = jax.jit(functools.partial(data.hash_permutation, 0, num_examples=n))
        stream = jnp.arange(count, dtype=jnp.uint32)
        epochs, positions = stream // n, stream % n
        draw(epochs, positions).block_until_ready()
        seconds = []
        for _ in range(200):
            start = time.perf_counter()
            draw(epochs, positions).block_until_ready()
            seconds.append(time.perf_counter() - start)
        print(f"n={n}, {count} indices: {min(seconds) * 1e6:.0f} us")


def main() -> None:
    variant = sys.argv[1]
    if variant == "hash_cost":
        return hash_cost()
    num_steps = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
    from benchmarks import measure, suite
    from research.core import data, trainer

    benchmark = suite.BY_NAME["regression_mlp_resident"]
    config = suite.load_config(benchmark, quick=False)
    config.num_train_steps = num_steps
    config.eval_every_steps = config.checkpoint_every_steps = num_steps
    config.train_order = "hash" if variant == "hash" else "numpy"
    task = suite.get_task(config)
    artifacts, workdir = tempfile.mkdtemp(), tempfile.mkdtemp()
    try:
        dataset, _ = suite.load_dataset(benchmark, config, task, artifacts)
        if variant == "precomputed":  # the same permutations, all drawn before the loop
            examples = data.num_examples(dataset.train)
            draw = data.epoch_permutation.__wrapped__
            epochs = num_steps * config.batch_size // examples + 2
            table = {epoch: draw(examples, config.seed, epoch) for epoch in range(epochs)}
            data.epoch_permutation = lambda count, seed, epoch, order: table[epoch]
        wrapped = dataclasses.replace(task, load_data=lambda artifacts_dir: dataset)
        calls = []
        with measure.timed_calls(trainer.Run, "device_batches", calls):
            summary = trainer.train_and_evaluate(config, workdir, wrapped)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(artifacts, ignore_errors=True)
    per_call = config.steps_per_dispatch
    input_ms = np.array(calls[1:]) * 1e3
    loop_s = (num_steps - per_call) / summary["steps_per_second"]
    print(f"{variant}: {summary['steps_per_second'] * config.batch_size:.0f} ex/s, steady "
          f"{summary['train']['steps_per_second'] * config.batch_size:.0f}; device_batches "
          f"mean {input_ms.mean():.3f} ms, share {input_ms.sum() / 1e3 / loop_s:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
