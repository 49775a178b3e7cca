"""The generic training loop: `train_and_evaluate(config, workdir, task)` serves every task.

`setup` does everything that can fail on bad input (config, workdir, data, a checkpoint of
another model) before the workdir is changed; the loop then trains, logs, evaluates and
checkpoints.
"""

import dataclasses
import functools
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from research.core import augmentation as augmentation_lib
from research.core import data, evaluation, input_pipeline, optimizers, precision, steps
from research.core import interval as interval_lib
from research.core.config import ConfigError, check_parameter_patterns, validate
from research.core.task import Task
from research.runtime import checkpoints, parallel, preemption
from research.runtime import workdir as workdir_lib

# Where --overwrite prepares the new run's artifacts while the old run is still in place.
INCOMING_ARTIFACTS = workdir_lib.ARTIFACTS_DIR + ".incoming"


@dataclasses.dataclass
class Run:
    """What `setup` prepares for the loop (and what the benchmarks time)."""

    config: ml_collections.ConfigDict
    workdir: str
    task: Task
    dataset: data.Dataset
    mesh: jax.sharding.Mesh  # every device of every process, axes "data" and "fsdp"
    # Global arrays laid out by `state_shardings`: restored, initialized from another run, or
    # fresh.
    state: steps.TrainState
    state_shardings: Any
    train_rng: jax.Array  # replicated on the mesh
    # Jitted (state, device_batches(step), rng, *resident) -> (state, outputs).
    train_step: Callable
    source: input_pipeline.TrainingSource  # the training batches, from the config's pipeline
    evaluate: evaluation.Evaluator
    writer: workdir_lib.Writer
    checkpointer: checkpoints.Checkpointer
    lock: workdir_lib.Lock
    start_time: float

    @property
    def resident(self) -> tuple:
        """What `train_step` takes after the rng: with input_pipeline "device", the training
        split on every device."""
        return self.source.resident

    def device_batches(self, step: int):
        """What one call of `train_step` takes from `step` on, as global arrays on the mesh."""
        return self.source.device_batches(step)

    def close(self) -> None:
        """Finishes checkpoint writes in flight (also after an error) and frees the workdir."""
        self.source.close()
        self.checkpointer.close()
        self.writer.close()
        self.lock.release()


def _check_task_config(config: ml_collections.ConfigDict, task: Task) -> None:
    data_dir = os.path.expanduser(config.data_dir)
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise ConfigError(
            f"config.data_dir={config.data_dir} is a file; set --config.data_dir to a folder."
        )
    pipeline = input_pipeline.requested(config)
    if pipeline in ("grain", "device") and tuple(config.bucket_boundaries):
        raise ConfigError(
            "config.bucket_boundaries needs the in-memory input pipeline; set "
            "--config.input_pipeline=memory or --config.bucket_boundaries='()'."
        )
    if pipeline == "device" and augmentation_lib.from_config(config, task.image_keys):
        raise ConfigError(
            "config.augmentation runs on the host, so it needs --config.input_pipeline=memory "
            "or grain; or turn it off for input_pipeline=device."
        )
    if tuple(config.bucket_boundaries) and not task.sequence_keys:
        raise ConfigError(
            f"config.bucket_boundaries is set but task '{config.task}' has no sequences to "
            "bucket; remove it with --config.bucket_boundaries='()'."
        )


def _warn_if_xla_flags_missing(config: ml_collections.ConfigDict) -> None:
    """`config.xla_flags` act only if in XLA_FLAGS before the backend started (launch.py)."""
    wanted = config.xla_flags.split()
    present = os.environ.get("XLA_FLAGS", "").split()
    missing = [flag for flag in wanted if flag not in present]
    if missing:
        logging.warning(
            "config.xla_flags %s are not in XLA_FLAGS: they take effect only when set before "
            "the JAX backend starts, as launch.py does.",
            " ".join(missing),
        )


def setup(
    config: ml_collections.ConfigDict,
    workdir: str,
    task: Task,
    *,
    init_from: str | None = None,
    overwrite: bool = False,
) -> Run:
    """Validates, locks the workdir, loads data, builds the model and restores or initializes.

    A run of another config in `workdir` is refused unless `overwrite`, and then removed only
    after the new run's data and model are ready. If anything fails, a workdir this call
    created is removed again and an existing one is left as it was.
    """
    validate(config, parallel.global_device_count())
    parallel.mesh_shape(config.mesh, parallel.global_device_count())
    _warn_if_xla_flags_missing(config)
    _check_task_config(config, task)
    workdir_lib.check_usable(workdir)
    created = not os.path.exists(workdir)
    lock = workdir_lib.Lock(workdir)
    try:
        return _prepare(config, workdir, task, lock, init_from, overwrite)
    except BaseException:
        lock.release()
        if parallel.process_index() != 0:  # process 0 alone writes the workdir
            raise
        if created:
            shutil.rmtree(workdir, ignore_errors=True)
        else:  # what --overwrite prepared for the new run goes; the old run stays
            shutil.rmtree(os.path.join(workdir, INCOMING_ARTIFACTS), ignore_errors=True)
        raise


def _prepare(config, workdir, task, lock, init_from, overwrite) -> Run:
    start_time = time.time()
    replacing = overwrite and workdir_lib.holds_run(workdir)
    if not replacing:
        workdir_lib.check_config_matches(workdir, config)
    artifacts = os.path.join(workdir, workdir_lib.ARTIFACTS_DIR)
    incoming = os.path.join(workdir, INCOMING_ARTIFACTS)
    dataset = _load_data(task, incoming if replacing else artifacts)
    pipeline, dataset = input_pipeline.choose(config, dataset)
    drawn_on_device = pipeline == "device" and config.train_order == "hash"
    if drawn_on_device and dataset.train.num_examples * config.batch_size >= 2**31:
        raise ConfigError(
            f"config.batch_size={config.batch_size} times the {dataset.train.num_examples} "
            "training examples reaches 2**31, past the int32 positions the device draws its "
            "batches with; set --config.train_order=numpy or a smaller batch size."
        )
    model = task.create_model(dataset.info)
    optimizer = optimizers.create_optimizer(config)
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    example_batch = dataset.train.take(np.arange(1))
    augmentation = augmentation_lib.from_config(config, task.image_keys)
    augmentation_lib.augment(example_batch, augmentation, 1, config.seed, 0, slice(0, 1))
    initialize = functools.partial(
        steps.create_train_state, model=model, task=task, example_batch=example_batch,
        optimizer=optimizer, loss_scaling=precision.uses_loss_scaling(config),
        ema=config.ema_decay > 0,
    )  # fmt: skip
    abstract_state = jax.eval_shape(initialize, init_rng)
    check_parameter_patterns(config, abstract_state.params, abstract_state.model_state)
    if config.batch_groups and abstract_state.model_state:
        raise ConfigError(
            f"config.batch_groups needs a model without state such as batch statistics (this "
            f"one keeps {', '.join(abstract_state.model_state)}); set --config.batch_groups=0."
        )
    mesh = parallel.make_mesh(config.mesh)
    parallel.check_fsdp_divides(abstract_state, mesh)
    state_shardings = parallel.state_shardings(abstract_state, mesh)
    # Initialized in place: each device computes only its own shards of the state.
    state = jax.jit(initialize, out_shardings=state_shardings)(init_rng)
    initialized_from = None
    if init_from:
        state, initialized_from = _initialize_from(init_from, state, config.init)
        state = parallel.put(parallel.to_host(state), state_shardings)
    if replacing and parallel.process_index() == 0:  # the new run is ready: the old one goes
        removed = workdir_lib.remove_run(workdir)
        if os.path.isdir(incoming):
            os.replace(incoming, artifacts)
        logging.warning("--overwrite removed the earlier run's %s.", ", ".join(removed))

    # Hosts prepare data at different speeds; they meet before their first collective (and
    # before reading checkpoints, which --overwrite may just have removed).
    parallel.wait_for_processes("prepared")
    checkpointer = checkpoints.Checkpointer(
        os.path.join(workdir, workdir_lib.CHECKPOINT_DIR), config.keep_checkpoints
    )
    restored = checkpointer.restore_latest(like=state)
    if restored is not None:
        state = restored
    writer = workdir_lib.Writer(workdir, start_time)
    start_time -= writer.keep_records_until(int(state.step))  # the clock runs on over restarts
    writer.write_config(config)
    record = {**workdir_lib.run_record(data.fingerprint(dataset)), **precision.record(config)}
    record["mesh"] = dict(mesh.shape)
    record["parameter_count"] = int(sum(leaf.size for leaf in jax.tree.leaves(state.params)))
    record.update(parallel.state_bytes(state))
    if restored is not None:  # a resumed run keeps what its first launch started from
        initialized_from = workdir_lib.read_run(workdir).get("initialized_from")
    if initialized_from:
        record["initialized_from"] = initialized_from
    writer.write_run(record)

    boundaries = tuple(config.bucket_boundaries)  # memory only (checked above)
    train_buckets = None
    if boundaries:
        train_buckets = data.length_buckets(dataset.train, task.sequence_keys, boundaries)
    source = input_pipeline.training_source(
        pipeline, dataset.train, config, mesh, augmentation=augmentation, buckets=train_buckets
    )
    eval_batch_size = config.eval_batch_size
    evaluate = evaluation.Evaluator(model, task, dataset, eval_batch_size, writer, mesh, boundaries)
    step_settings = dict(
        model=model,
        task=task,
        optimizer=optimizer,
        learning_rate_fn=optimizers.create_learning_rate_schedule(config),
        skip_nonfinite=config.skip_nonfinite_steps,
        grad_accum_steps=config.grad_accum_steps,
        grad_accum_unroll=config.grad_accum_unroll,
        block_sums=(
            functools.partial(parallel.block_sums, mesh, groups=config.batch_groups)
            if config.batch_groups
            else None
        ),
        ema_decay=config.ema_decay,
    )
    if config.steps_per_dispatch == 1:
        train_step = functools.partial(steps.train_step, **step_settings)
    else:
        unroll = config.steps_per_dispatch_unroll
        train_step = functools.partial(steps.train_steps, unroll=unroll, **step_settings)
    train_step = jax.jit(
        source.step_function(train_step),
        out_shardings=(state_shardings, parallel.replicated(mesh)),
        donate_argnums=0,
    )
    train_rng = parallel.put_replicated(train_rng, mesh)
    parallel.wait_for_processes("ready")  # process 0 alone wrote the records
    return Run(
        config, workdir, task, dataset, mesh, state, state_shardings, train_rng, train_step,
        source, evaluate, writer, checkpointer, lock, start_time,
    )  # fmt: skip


def _load_data(task: Task, artifacts_dir: str) -> data.Dataset:
    """The task's data; process 0 loads it first and alone writes what it learns from it
    (tokenizers, input statistics) to `artifacts_dir`, which the other processes then read."""
    # As long as process 0 takes (WMT's encoding: many minutes); a dead one ends the wait at
    # once through the heartbeat.
    timeout_s = 6 * 3600
    if parallel.process_index() != 0:
        parallel.wait_for_processes("artifacts_written", timeout_s)
    dataset = task.load_data(artifacts_dir)
    if parallel.process_index() == 0:
        parallel.wait_for_processes("artifacts_written", timeout_s)
    return dataset


def _initialize_from(
    source: str, state: steps.TrainState, init_config
) -> tuple[steps.TrainState, dict]:
    """A fresh state (step 0, new optimizer state) with the parameters of another run, except
    those `init_config.reinitialize` matches and those the other run lacks, which keep their
    fresh values; and the record of it for run.json.

    `source` is a workdir, read at its newest complete checkpoint, or `WORKDIR@STEP`. The
    other run is opened read-only: nothing there is created, moved or written.
    """
    other_workdir, step = source, None
    head, at, tail = source.rpartition("@")
    if at and tail.isdigit():
        other_workdir, step = head, int(tail)
    directory = os.path.join(other_workdir, workdir_lib.CHECKPOINT_DIR)
    if not os.path.isdir(directory):
        raise workdir_lib.WorkdirError(
            f"--init_from={source} holds no checkpoints folder; pass the workdir of a "
            "run that saved a checkpoint."
        )
    state, report = checkpoints.restore_model_from(
        directory, state, tuple(init_config.reinitialize), step
    )
    if not report.restored:
        holds = ", ".join(report.unused[:6]) + (", ..." if len(report.unused) > 6 else "")
        raise checkpoints.CheckpointMismatchError(
            f"--init_from={source} restored 0 of this model's arrays: its checkpoint of step "
            f"{report.step} holds {holds or 'no arrays of this model'}; pass a run of this "
            "architecture."
        )
    logging.info(
        "Initialized from %s at step %d: restored %d arrays (%s); initialized fresh by "
        "config.init.reinitialize: %d (%s).",
        other_workdir, report.step, len(report.restored), ", ".join(report.restored),
        len(report.reinitialized), ", ".join(report.reinitialized) or "none",
    )  # fmt: skip
    if report.absent:
        logging.warning(
            "Absent from %s, so initialized fresh: %s.", other_workdir, ", ".join(report.absent)
        )
    if report.unused:
        logging.info("Not used from %s: %s.", other_workdir, ", ".join(report.unused))
    shapes = checkpoints.expected_shapes({"params": state.params, "model_state": state.model_state})
    sizes = {checkpoints.shown_name(path): int(np.prod(shape)) for path, shape in shapes.items()}
    count = lambda names: sum(sizes[name] for name in names)
    record = {"workdir": os.path.abspath(other_workdir), "step": report.step}
    record["params_sha256"] = report.params_sha256
    record["arrays"] = {
        "restored": len(report.restored),
        "reinitialized": len(report.reinitialized),
        "absent": len(report.absent),
    }
    record["parameters"] = {
        "restored": count(report.restored),
        "reinitialized": count(report.reinitialized),
        "absent": count(report.absent),
    }
    return state, {**record, "reinitialized": report.reinitialized, "absent": report.absent}


def metrics_table(split_metrics: dict[str, dict[str, float]]) -> str:
    """The final metrics, a row per split and a column per metric, each column as wide as its
    longest entry so that no two run together."""
    names = sorted({name for metrics in split_metrics.values() for name in metrics})
    rows = [["split", *names]]
    for split, metrics in split_metrics.items():
        rows.append([split, *(f"{metrics.get(name, float('nan')):.6g}" for name in names)])
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    )


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    task: Task,
    *,
    init_from: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Trains `task` as `config` says, resuming from the workdir's latest checkpoint.

    Without a checkpoint, `init_from` (another run's workdir) supplies the initial parameters.
    SIGTERM or SIGINT saves a checkpoint and raises `preemption.Preempted`. Returns the
    summary also written to `workdir/summary.json`.
    """
    run = setup(config, workdir, task, init_from=init_from, overwrite=overwrite)
    try:
        return _train(run)
    finally:
        run.close()


def _train(run: Run) -> dict[str, Any]:
    config, checkpointer = run.config, run.checkpointer
    state, rng = run.state, run.train_rng
    first_step = int(parallel.to_host(state.step))
    run.state = None  # donated to the first step: `state` is the only live state from here on
    num_steps = config.num_train_steps
    per_dispatch = config.steps_per_dispatch
    # A run resumes only with its own config, whose cadences are multiples of per_dispatch.
    assert first_step % per_dispatch == 0, (first_step, per_dispatch)
    interval, train_metrics, eval_results = interval_lib.Interval(first_step, per_dispatch), {}, {}
    last_saved = first_step or None
    loop_start = loop_first_step = None
    with preemption.SignalWatcher() as signals:
        for step in range(first_step, num_steps, per_dispatch):
            state, outputs = run.train_step(state, run.device_batches(step), rng, *run.resident)
            interval.add(outputs)
            done = step + per_dispatch
            if loop_start is None:  # exclude compilation from the measured speed
                jax.block_until_ready(outputs)
                loop_start, loop_first_step = time.time(), done
            is_last = done == num_steps
            must_log = done % config.log_every_steps == 0 or is_last
            stop = signals.should_stop(at_sync_point=must_log)
            must_save = done % config.checkpoint_every_steps == 0 or is_last or stop
            if must_log or must_save:
                interval_lib.raise_if_diverged(interval, last_saved, config)
            if must_log:
                train_metrics = interval.summarize(run.task, done)
                run.writer.write_metrics(done, "train", train_metrics)
                elapsed = time.time() - loop_start
                speed = (done - loop_first_step) / elapsed if done > loop_first_step else 0.0
                interval_lib.log_progress(
                    done, num_steps, train_metrics, speed or train_metrics["steps_per_second"]
                )
            if done % config.eval_every_steps == 0 or is_last:
                eval_results = run.evaluate(done, state)
            if must_save:
                checkpointer.save(done, state)
                last_saved = done
            if stop and not is_last:
                checkpointer.wait()
                raise preemption.Preempted(
                    f"Stopped by a signal at step {done} after saving a checkpoint in "
                    f"{run.workdir}; run the same command again to resume from step {done}."
                )
    if first_step >= num_steps:  # resumed a finished run: evaluate it again
        eval_results = run.evaluate(num_steps, state)
    checkpointer.wait()
    final_params = parallel.to_host(state.params)
    loop_seconds = time.time() - loop_start if loop_start else 0.0
    averaged = _evaluate_average(run, state, eval_results)
    moving_averages = {}  # with moving averages: what evaluation, export and --init_from use
    if state.ema:
        ema_params = parallel.to_host(state.ema["params"])
        moving_averages["ema_params_sha256"] = workdir_lib.params_sha256(ema_params)
    summary = {
        **eval_results,
        **averaged,
        "train": train_metrics,
        "params_sha256": workdir_lib.params_sha256(final_params),
        **moving_averages,
        "final_step": num_steps,
        **({"evaluation_details": run.evaluate.details} if run.evaluate.details else {}),
        "wall_time_s": time.time() - run.start_time,
        "steps_per_second": (num_steps - loop_first_step) / loop_seconds
        if loop_start and loop_seconds > 0
        else None,
    }
    run.writer.write_summary(summary)
    run.writer.plot_learning_curves()
    logging.info("Final metrics:\n%s", metrics_table(eval_results))
    return summary


def _evaluate_average(run: Run, final_state: steps.TrainState, eval_results: dict) -> dict:
    """With `average_last_checkpoints` > 1: evaluates the mean of the last checkpoints too."""
    count = run.config.average_last_checkpoints
    if count <= 1:
        return {}
    state, averaged_steps = checkpoints.average_of_last(
        run.checkpointer.directory, count, final_state
    )
    logging.info("Evaluating the mean parameters of steps %s.", averaged_steps)
    state = parallel.put(parallel.to_host(state), run.state_shardings)
    eval_results.update(run.evaluate(run.config.num_train_steps, state, suffix="_averaged"))
    return {
        "averaged_checkpoints": averaged_steps,
        "averaged_params_sha256": workdir_lib.params_sha256(parallel.to_host(state.params)),
    }
