"""The loop of one benchmark row, and the training thread's time in `Run.device_batches`.

    .venv/bin/python benchmarks/input_calls.py NAME STEPS [LOG_EVERY]

Prints the loop's steps/s, the last log interval's, the mean and p90 of the per-call input
time (the first call, before the loop's clock starts, left out), and its share of the loop.
benchmarks/NOTES.md ("Grain input wait") used it to compare input-path variants call by call.
"""

import dataclasses
import os
import shutil
import sys
import tempfile

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)


def main() -> None:
    name, num_steps = sys.argv[1], int(sys.argv[2])
    log_every = int(sys.argv[3]) if len(sys.argv) > 3 else 50
    from benchmarks import measure, suite

    benchmark = suite.BY_NAME[name]
    config = suite.load_config(benchmark, quick=False)
    os.environ["XLA_FLAGS"] = config.xla_flags  # before the backend starts
    from research.core import trainer
    from research.runtime import workdir as workdir_lib

    config.num_train_steps, config.log_every_steps = num_steps, log_every
    config.eval_every_steps = config.checkpoint_every_steps = num_steps
    task = suite.get_task(config)
    artifacts, workdir = tempfile.mkdtemp(), tempfile.mkdtemp()
    try:
        dataset, _ = suite.load_dataset(benchmark, config, task, artifacts)
        wrapped = dataclasses.replace(task, load_data=lambda artifacts_dir: dataset)
        calls = []
        with measure.timed_calls(trainer.Run, "device_batches", calls):
            summary = trainer.train_and_evaluate(config, workdir, wrapped)
        intervals = [
            round(r["steps_per_second"], 2)
            for r in workdir_lib.read_metrics(workdir)
            if "steps_per_second" in r
        ]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(artifacts, ignore_errors=True)
    per_call = config.steps_per_dispatch
    input_ms = np.array(calls[1:]) * 1e3
    loop_s = (num_steps - per_call) / summary["steps_per_second"]
    print(f"{name}: {summary['steps_per_second']:.2f} steps/s, steady "
          f"{summary['train']['steps_per_second']:.2f} (intervals {intervals}); device_batches "
          f"mean {input_ms.mean():.3f} ms, p90 {np.percentile(input_ms, 90):.3f} ms, "
          f"share {input_ms.sum() / 1e3 / loop_s:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
