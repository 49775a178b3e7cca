"""Measures one benchmark in this process: the bare train step, the full loop, PyTorch's twin.

Run by `run.py` in a fresh process per benchmark, so peak memory and compilation caches
belong to that benchmark alone.
"""

import contextlib
import dataclasses
import functools
import os
import resource
import shutil
import tempfile
import time

import jax
import numpy as np

from benchmarks import suite
from research.core import data, trainer
from research.core import interval as interval_lib
from research.runtime import checkpoints
from research.runtime import workdir as workdir_lib

# Seconds of timed work per repeat; three repeats, the best counts (the least disturbed by other
# processes on a shared machine).
REPEATS = 3
BUDGET_S = {"quick": 1.0, "full": 3.0}
LOOP_BUDGET_S = {"quick": 4.0, "full": 12.0}
# At most this many steps: a loop far slower than its bare step (tiny models, one step per
# call) still ends in seconds, and fast steps run long enough for a steady speed.
LOOP_STEPS = {"quick": (10, 3000), "full": (20, 20000)}


SCALING_KEYS = ("dtype", "param_dtype", "grad_accum_steps", "steps_per_dispatch", "xla_flags")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def time_loop(run_steps, budget_s: float, repeats: int = REPEATS) -> tuple[float, int, list]:
    """(best seconds per step, steps per repeat, all per-step times) of `run_steps(n)`.

    Two warm-up steps, two to estimate; the steps per repeat fill about `budget_s` seconds.
    """
    run_steps(2)
    start = time.perf_counter()
    run_steps(2)
    estimate = (time.perf_counter() - start) / 2
    count = max(1, min(500, int(budget_s / max(estimate, 1e-6))))
    per_step = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_steps(count)
        per_step.append((time.perf_counter() - start) / count)
    return min(per_step), count, per_step


def cores_used(function):
    """(function(), process CPU seconds / wall seconds while it ran)."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = function()
    return result, (time.process_time() - cpu) / (time.perf_counter() - wall)


def bare_step(config, task, dataset) -> dict:
    """The trainer's jitted train step, compiled ahead of time, to be run alone on one batch.

    The step, state and batch come from `trainer.setup`, as in a run. Returns its compile
    time, FLOPs and parameter count, and `time(budget_s)`, which times `REPEATS` runs of the
    step in a loop and returns their seconds per step.
    """
    workdir = tempfile.mkdtemp(prefix="benchmark_bare_")
    wrapped = dataclasses.replace(task, load_data=lambda artifacts_dir: dataset)
    run = trainer.setup(config, workdir, wrapped)
    run.close()
    shutil.rmtree(workdir, ignore_errors=True)
    parameters = sum(leaf.size for leaf in jax.tree.leaves(run.state.params))
    carry = {"state": run.state}
    # With steps_per_dispatch = k, one call runs k steps on stacked batches.
    per_call = config.steps_per_dispatch
    batch = run.device_batches(0)
    rng = run.train_rng
    start = time.perf_counter()
    compiled = run.train_step.lower(carry["state"], batch, rng, *run.resident).compile()
    compile_s = time.perf_counter() - start
    # The program of one device; the mesh's N devices do N times this work.
    flops = (compiled.cost_analysis() or {}).get("flops", 0.0) * run.mesh.devices.size
    flops /= per_call  # per training step

    def run_steps(count):
        # With several devices, at most MAX_STEPS_IN_FLIGHT calls ahead of the host, as in the
        # training loop: with more simulated devices than cores, an unbounded queue lets one
        # device start a later call's all-reduce while another is still in an earlier one (a
        # 40 s rendezvous abort). One device keeps the unbounded queue it was measured with.
        in_flight = []
        for _ in range(count):
            carry["state"], outputs = compiled(carry["state"], batch, rng, *run.resident)
            in_flight.append(outputs)
            if len(in_flight) > interval_lib.MAX_STEPS_IN_FLIGHT and run.mesh.devices.size > 1:
                jax.block_until_ready(in_flight.pop(0))
        jax.block_until_ready((carry["state"], outputs))

    return {
        "parameters": parameters,
        "compile_s": compile_s,
        "flops_per_step": flops,
        "time": lambda budget_s: [t / per_call for t in time_loop(run_steps, budget_s)[2]],
        "run_calls": run_steps,  # n calls of the compiled step, waited for
    }


def bare_speed(config, per_step: list[float]) -> dict:
    """The bare-step fields from all timed runs (the best one counts)."""
    seconds = min(per_step)
    return {
        "bare_steps_per_s": 1 / seconds,
        "bare_examples_per_s": config.batch_size / seconds,
        "bare_spread": max(per_step) / seconds - 1,
    }


@contextlib.contextmanager
def timed_calls(owner, name: str, durations: list[float]):
    """Replaces `owner.name` by a wrapper appending each call's duration to `durations`."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            durations.append(time.perf_counter() - start)

    setattr(owner, name, wrapper)
    try:
        yield
    finally:
        setattr(owner, name, original)


def loop_config(config, bare_steps_per_s: float, mode: str, max_steps: int | None = None):
    """The config of a short full-loop run: how many steps, and the cadences it keeps.

    The step count fills about `LOOP_BUDGET_S` at the bare step's speed, within
    `LOOP_STEPS` (in full mode `max_steps`, where given, is the cap). Logging keeps the
    config's cadence when the run holds four logs of it, else logs four times (the last
    interval, a whole one, gives the steady speed); checkpoints keep the config's cadence (in
    a short run: one, the final one, which every run writes). Evaluation is off: the
    benchmark data has no evaluation splits.
    """
    low, high = LOOP_STEPS[mode]
    if mode == "full" and max_steps:
        high = max_steps
    per_call = config.steps_per_dispatch
    num_steps = int(min(high, max(low, LOOP_BUDGET_S[mode] * bare_steps_per_s)))
    num_steps -= num_steps % per_call  # every cadence is a multiple of steps_per_dispatch
    log_every = config.log_every_steps
    if num_steps < 4 * log_every:
        log_every = max(per_call, num_steps // 4 // per_call * per_call)
    num_steps -= num_steps % log_every  # the last log interval, the steady speed, is whole
    short = config.copy_and_resolve_references()
    short.num_train_steps = num_steps
    short.log_every_steps = log_every
    short.eval_every_steps = num_steps
    short.warmup_steps = min(config.warmup_steps, num_steps - 1)
    cadence = (
        f"{num_steps} steps, log every {log_every} (config {config.log_every_steps}), "
        f"checkpoint every {min(num_steps, config.checkpoint_every_steps)} "
        f"(config {config.checkpoint_every_steps}), no evaluation"
    )
    return short, cadence


def full_loop(
    config, task, dataset, bare_steps_per_s: float, mode: str, max_steps: int | None = None
) -> dict:
    """`trainer.train_and_evaluate` on the benchmark data, with its input and checkpoint time."""
    short, cadence = loop_config(config, bare_steps_per_s, mode, max_steps)
    wrapped = dataclasses.replace(task, load_data=lambda artifacts_dir: dataset)
    workdir = tempfile.mkdtemp(prefix="benchmark_loop_")
    input_s, checkpoint_s = [], []
    try:
        with (
            timed_calls(trainer.Run, "device_batches", input_s),  # every input path
            timed_calls(checkpoints.Checkpointer, "save", checkpoint_s),
            timed_calls(checkpoints.Checkpointer, "wait", checkpoint_s),
        ):
            summary = trainer.train_and_evaluate(short, workdir, wrapped)
        # Every log interval's speed but the first (it holds compilation).
        interval_speeds = [
            record["steps_per_second"]
            for record in workdir_lib.read_metrics(workdir)
            if record["split"] == "train"
        ][1:]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    steps_per_s = summary["steps_per_second"]
    # The loop's clock starts after the first call (compilation): leave out its batches.
    per_call = short.get("steps_per_dispatch", 1)
    loop_seconds = (short.num_train_steps - per_call) / steps_per_s
    input_seconds = sum(input_s[1:])
    # The last log interval: after the one-time costs of the first log (TensorBoard file,
    # learning-curve plot) and before the final checkpoint.
    steady_steps_per_s = summary["train"]["steps_per_second"]
    return {
        "examples_per_s": steps_per_s * short.batch_size,
        "loop_steps_per_s": steps_per_s,
        "steady_examples_per_s": steady_steps_per_s * short.batch_size,
        # The median interval: a disturbance from another process on a shared machine (whole
        # seconds at 60% speed on 2 cores of an AMD EPYC, 2026-12-06) moves it less than the
        # last interval or the mean.
        "median_interval_examples_per_s": float(np.median(interval_speeds)) * short.batch_size
        if interval_speeds
        else None,
        "loop_one_time_s": loop_seconds - (short.num_train_steps - per_call) / steady_steps_per_s,
        "input_wait_fraction": input_seconds / loop_seconds,
        "checkpoint_fraction": sum(checkpoint_s) / loop_seconds,
        "loop_cadence": cadence,
    }


def torch_step(config, dataset, mode: str) -> dict:
    """The PyTorch twin's step on the bare step's batch, at all cores and at one thread."""
    import torch

    from benchmarks import torch_models

    batch = data.train_batch(dataset.train, config.batch_size, config.seed, 0)
    results = {}
    for key, threads in (("torch", os.cpu_count()), ("torch_1thread", 1)):
        torch.set_num_threads(threads)
        step, parameters = torch_models.create_train_step(config, dataset.info, batch)
        seconds, _, _ = time_loop(
            lambda count, step=step: [step() for _ in range(count)], BUDGET_S[mode]
        )
        results[f"{key}_examples_per_s"] = config.batch_size / seconds
        results["torch_parameters"] = parameters
    results["torch_threads"] = os.cpu_count()
    return results


def measure(name: str, mode: str, peak_flops: float, settings: dict | None = None) -> dict:
    """Every number of one benchmark row (see run.py for the fields); `settings` override
    config keys (run.py --set)."""
    benchmark = suite.BY_NAME[name]
    config = suite.load_config(benchmark, quick=mode == "quick", settings=settings)
    task = suite.get_task(config)
    artifacts = tempfile.mkdtemp(prefix="benchmark_artifacts_")
    rss_after_imports = peak_rss_mb()
    try:
        dataset, data_source = suite.load_dataset(benchmark, config, task, artifacts)
        bare = bare_step(config, task, dataset)
        # Timed before and after the loop run: a disturbance from other processes rarely
        # covers both, and the best run counts.
        per_step, cores = cores_used(lambda: bare["time"](BUDGET_S[mode]))
        loop = full_loop(config, task, dataset, 1 / min(per_step), mode, benchmark.loop_steps)
        per_step += bare["time"](BUDGET_S[mode])
    finally:
        shutil.rmtree(artifacts, ignore_errors=True)
    peak_memory = peak_rss_mb()
    speed = bare_speed(config, per_step)
    row = {
        "name": name,
        "examples_per_s": loop["examples_per_s"],
        "bare_examples_per_s": speed["bare_examples_per_s"],
        "loop_overhead": 1 - loop["examples_per_s"] / speed["bare_examples_per_s"],
        "steady_loop_overhead": 1 - loop["steady_examples_per_s"] / speed["bare_examples_per_s"],
        "median_interval_overhead": None
        if loop["median_interval_examples_per_s"] is None
        else 1 - loop["median_interval_examples_per_s"] / speed["bare_examples_per_s"],
        "input_wait_fraction": loop["input_wait_fraction"],
        "mfu": bare["flops_per_step"] * speed["bare_steps_per_s"] / peak_flops,
        "compile_s": bare["compile_s"],
        "peak_memory_mb": peak_memory,
        "rss_after_imports_mb": rss_after_imports,
        "batch_size": config.batch_size,
        "data": data_source,
        "parameters": bare["parameters"],
        "flops_per_step": bare["flops_per_step"],
        "bare_steps_per_s": speed["bare_steps_per_s"],
        "bare_spread": speed["bare_spread"],
        "bare_runs": len(per_step),
        "bare_cores_used": cores,
        **{key: value for key, value in loop.items() if key != "examples_per_s"},
    }
    notes = [benchmark.note] if benchmark.note else []
    try:
        row.update(torch_step(config, dataset, mode))
        row["speedup_vs_torch"] = row["bare_examples_per_s"] / row["torch_examples_per_s"]
    except ModuleNotFoundError:  # benchmarks/requirements.txt not installed
        notes.append("PyTorch not installed: no torch columns")
    if mode == "quick" and benchmark.quick_overrides:
        notes.append(f"--quick overrides {benchmark.quick_overrides}")
    row["notes"] = "; ".join(notes)
    row["settings"] = {key: config.get(key) for key in SCALING_KEYS}
    return row


def numbers_only(row: dict) -> dict:
    """Floats rounded for the JSON file."""
    return {k: round(v, 5) if isinstance(v, float | np.floating) else v for k, v in row.items()}
