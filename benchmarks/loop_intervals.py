"""One benchmark's loop against its bare step, log interval by log interval, interleaved, so
that the comparison holds on a machine whose speed changes from second to second.

    .venv/bin/python benchmarks/loop_intervals.py NAME [STEPS] [--set key=value ...]

The loop is `trainer.train_and_evaluate` with the config's cadences (evaluation only at the
end). At every log step, once the interval's outputs are on the host (the step has finished),
the bare step (`measure.bare_step`: the same compiled step on one fixed batch) runs as many
steps as the interval held; its time is taken out of that interval's clock. Each interval
and the bare piece right after it make a pair. Prints every pair's speeds in steps per second
(`*` marks an interval that ends with a checkpoint save), their medians, and the loop's
overhead as the median over pairs of 1 - loop / bare (benchmarks/NOTES.md, "The data order
drawn on the device").
"""

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)


def main() -> None:
    from benchmarks import measure, run, suite
    from research.core import interval as interval_lib
    from research.core import trainer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(suite.BY_NAME))
    parser.add_argument("steps", nargs="?", type=int, help="num_train_steps (the config's)")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE: a config key")
    args = parser.parse_args()
    benchmark = suite.BY_NAME[args.name]
    config = suite.load_config(benchmark, quick=False, settings=run.parse_settings(args.set))
    if args.steps:
        config.num_train_steps = args.steps
    config.eval_every_steps = config.num_train_steps
    task = suite.get_task(config)
    per_call = config.steps_per_dispatch
    pairs = []  # (step, loop steps/s, bare steps/s)
    original = interval_lib.Interval.summarize

    def summarize(self, task, done):
        steps, start = done - self.first_step, time.perf_counter()
        run_calls(steps // per_call)
        bare_s = time.perf_counter() - start
        loop_s = time.time() - self.start - bare_s  # `original` ends the interval's clock
        pairs.append((done, steps / loop_s, steps / bare_s))
        return original(self, task, done)

    artifacts, workdir = tempfile.mkdtemp(), tempfile.mkdtemp()
    try:
        dataset, _ = suite.load_dataset(benchmark, config, task, artifacts)
        run_calls = measure.bare_step(config, task, dataset)["run_calls"]
        run_calls(2)  # warm up
        interval_lib.Interval.summarize = summarize
        wrapped = dataclasses.replace(task, load_data=lambda artifacts_dir: dataset)
        trainer.train_and_evaluate(config, workdir, wrapped)
    finally:
        interval_lib.Interval.summarize = original
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(artifacts, ignore_errors=True)
    pairs = pairs[1:]  # the first interval holds compilation
    print("loop/bare steps/s per interval (* = a checkpoint is saved as it ends):")
    print(" ".join(
        f"{loop:.0f}/{bare:.0f}{'*' if done % config.checkpoint_every_steps == 0 else ''}"
        for done, loop, bare in pairs
    ))  # fmt: skip
    loop, bare = np.array([p[1] for p in pairs]), np.array([p[2] for p in pairs])
    print(f"median loop {np.median(loop):.0f}, median bare {np.median(bare):.0f} steps/s; "
          f"overhead, median over pairs: {np.median(1 - loop / bare):.1%} "
          f"(quartiles {np.percentile(1 - loop / bare, 25):.1%} "
          f"{np.percentile(1 - loop / bare, 75):.1%}, {len(pairs)} pairs)")  # fmt: skip


if __name__ == "__main__":
    main()
