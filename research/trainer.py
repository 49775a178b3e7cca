"""The generic training loop: `train_and_evaluate(config, workdir, task)` serves every task."""

import functools
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from research import checkpoints, data, evaluation, optimizers, parallel, preemption, steps
from research import workdir as workdir_lib
from research.config import ConfigError, validate
from research.task import Task

# Train-step outputs that are not metric sums for `task.summarize`.
_STEP_DIAGNOSTICS = ("grad_norm", "learning_rate", "all_finite")


class TrainingDivergedError(FloatingPointError):
    """The loss or a gradient became NaN or infinite."""


def _summarize_train(pending: list[dict], task: Task) -> dict[str, float]:
    """Metrics over the steps since the last log, from their fetched per-step outputs."""
    fetched = [parallel.unreplicate(metrics) for metrics in pending]
    sums = {
        name: float(np.sum([m[name] for m in fetched], dtype=np.float64))
        for name in fetched[0]
        if name not in _STEP_DIAGNOSTICS
    }
    return {
        **task.summarize(sums),
        "grad_norm": float(np.mean([m["grad_norm"] for m in fetched])),
        "learning_rate": float(fetched[-1]["learning_rate"]),
    }


def _first_nonfinite_step(pending: list[dict], first_step: int) -> int | None:
    """The 1-based step number whose loss or gradient was not finite, if any."""
    finite = [bool(parallel.unreplicate(metrics["all_finite"])) for metrics in pending]
    return None if all(finite) else first_step + finite.index(False)


def _raise_if_diverged(pending: list[dict], done: int, last_saved: int, config) -> None:
    """Stops training at a non-finite loss or gradient unless such steps are skipped."""
    if config.get("skip_nonfinite_steps", False):
        return
    bad_step = _first_nonfinite_step(pending, done - len(pending) + 1)
    if bad_step is not None:
        raise TrainingDivergedError(
            f"The loss or a gradient became NaN or infinite at step {bad_step}; the checkpoint "
            f"of step {last_saved} is intact. Lower the learning rate, set "
            "--config.grad_clip_norm, or set --config.skip_nonfinite_steps=True."
        )


def _log_progress(done: int, num_steps: int, train_metrics: dict[str, float]) -> None:
    speed = train_metrics["steps_per_second"]
    logging.info(
        "step %d/%d  loss %.5g  %.1f steps/s  ETA %s",
        done,
        num_steps,
        train_metrics["loss"],
        speed,
        time.strftime("%H:%M:%S", time.gmtime((num_steps - done) / speed)),
    )


def _print_table(split_metrics: dict[str, dict[str, float]]) -> None:
    names = sorted({name for metrics in split_metrics.values() for name in metrics})
    lines = ["split  " + "".join(f"{name:>18}" for name in names)]
    for split, metrics in split_metrics.items():
        cells = "".join(f"{metrics.get(name, float('nan')):>18.6g}" for name in names)
        lines.append(f"{split:<7}{cells}")
    logging.info("Final metrics:\n%s", "\n".join(lines))


def _initialize_from(other_workdir: str, state: steps.TrainState, config) -> steps.TrainState:
    """A fresh state (step 0, new optimizer state) with the parameters of another run."""
    source = checkpoints.Checkpointer(
        os.path.join(other_workdir, workdir_lib.CHECKPOINT_DIR), config.get("keep_checkpoints", 3)
    )
    restored = source.restore_latest(like=state)
    source.close()
    if restored is None:
        raise workdir_lib.WorkdirError(
            f"--init_from={other_workdir} has no readable checkpoint; pass the workdir of a run "
            "that saved one."
        )
    logging.info("Initialized the parameters from %s (step %d).", other_workdir, restored.step)
    return state.replace(params=restored.params, model_state=restored.model_state)


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, task: Task, *, init_from: str | None = None
) -> dict[str, Any]:
    """Trains `task` as `config` says, resuming from the workdir's latest checkpoint.

    Without a checkpoint, `init_from` (another run's workdir) supplies the initial parameters.
    SIGTERM or SIGINT saves a checkpoint and raises `preemption.Preempted`. Returns the
    summary also written to `workdir/summary.json`.
    """
    validate(config, parallel.global_device_count())
    boundaries = tuple(config.get("bucket_boundaries", ()))
    if boundaries and not task.sequence_keys:
        raise ConfigError(
            f"config.bucket_boundaries is set but task '{config.task}' has no sequences to "
            "bucket; remove it with --config.bucket_boundaries='()'."
        )
    workdir_lib.check_config_matches(workdir, config)
    start_time = time.time()
    dataset = task.load_data(config, os.path.join(workdir, workdir_lib.ARTIFACTS_DIR))
    model = task.create_model(config, dataset.info)
    optimizer = optimizers.create_optimizer(config)
    learning_rate_fn = optimizers.create_learning_rate_schedule(config)
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    example_batch = {key: value[:1] for key, value in dataset.train.items()}
    state = steps.create_train_state(init_rng, model, task, example_batch, optimizer)

    writer = workdir_lib.Writer(workdir, start_time)
    checkpointer = checkpoints.Checkpointer(
        os.path.join(workdir, workdir_lib.CHECKPOINT_DIR), config.get("keep_checkpoints", 3)
    )
    restored = checkpointer.restore_latest(like=state)
    if restored is not None:
        state = restored
        writer.truncate_records_after(int(state.step))
    elif init_from:
        state = _initialize_from(init_from, state, config)
    writer.write_config(config)
    writer.write_run(workdir_lib.run_record(data.fingerprint(dataset)))
    train_buckets = None
    if boundaries:
        train_buckets = data.length_buckets(dataset.train, task.sequence_keys, boundaries)
    run_evaluation = evaluation.Evaluator(
        model,
        task,
        dataset,
        config.get("eval_batch_size", config.batch_size),
        writer,
        boundaries,
    )

    p_train_step = parallel.pmap(
        functools.partial(
            steps.train_step,
            model=model,
            task=task,
            optimizer=optimizer,
            learning_rate_fn=learning_rate_fn,
            skip_nonfinite=config.get("skip_nonfinite_steps", False),
        ),
        donate_argnums=(0,),
    )
    p_state = parallel.replicate(state)
    p_rng = parallel.replicate(train_rng)
    del state  # the replicated copy is the only live state from here on

    first_step = int(parallel.unreplicate(p_state.step))
    num_steps = config.num_train_steps
    pending: list[dict] = []
    interval_start, interval_first_step = time.time(), first_step
    loop_start, train_metrics, eval_results = None, {}, {}
    last_saved = first_step
    with preemption.SignalWatcher() as signals:
        for step in range(first_step, num_steps):
            batch = data.train_batch(
                dataset.train, config.batch_size, config.seed, step, train_buckets
            )
            p_state, step_metrics = p_train_step(p_state, parallel.shard(batch), p_rng)
            pending.append(step_metrics)
            done = step + 1
            if loop_start is None:  # exclude compilation from the measured speed
                jax.block_until_ready(step_metrics)
                loop_start, loop_first_step = time.time(), done
            is_last = done == num_steps
            must_log = done % config.log_every_steps == 0 or is_last
            stop = signals.should_stop(at_sync_point=must_log)
            must_save = done % config.checkpoint_every_steps == 0 or is_last or stop
            if must_log or must_save:
                _raise_if_diverged(pending, done, last_saved, config)
            if must_log:
                train_metrics = _summarize_train(pending, task)
                now = time.time()
                train_metrics["steps_per_second"] = (done - interval_first_step) / (
                    now - interval_start
                )
                writer.write_metrics(done, "train", train_metrics)
                _log_progress(done, num_steps, train_metrics)
                pending, interval_start, interval_first_step = [], now, done
            if done % config.eval_every_steps == 0 or is_last:
                eval_results = run_evaluation(done, p_state)
            if must_save:
                checkpointer.save(done, parallel.unreplicate(p_state))
                last_saved = done
            if stop and not is_last:
                checkpointer.wait()
                checkpointer.close()
                raise preemption.Preempted(
                    f"Stopped by a signal at step {done} after saving a checkpoint in "
                    f"{workdir}; run the same command again to resume from step {done}."
                )
    if first_step >= num_steps:  # resumed a finished run: evaluate it again
        eval_results = run_evaluation(num_steps, p_state)
    checkpointer.wait()
    checkpointer.close()

    final_state = parallel.unreplicate(p_state)
    final_params = final_state.params
    averaged = {}
    if config.get("average_last_checkpoints", 0) > 1:
        averaged_state, averaged_steps = checkpoints.average_of_last(
            checkpointer.directory, config.average_last_checkpoints, final_state
        )
        logging.info("Evaluating the mean parameters of steps %s.", averaged_steps)
        eval_results.update(
            run_evaluation(num_steps, parallel.replicate(averaged_state), suffix="_averaged")
        )
        averaged = {
            "averaged_checkpoints": averaged_steps,
            "averaged_params_sha256": workdir_lib.params_sha256(averaged_state.params),
        }
    loop_seconds = time.time() - loop_start if loop_start else 0.0
    summary = {
        **eval_results,
        "train": train_metrics,
        "params_sha256": workdir_lib.params_sha256(final_params),
        **averaged,
        "final_step": num_steps,
        **({"evaluation_details": run_evaluation.details} if run_evaluation.details else {}),
        "wall_time_s": time.time() - start_time,
        "steps_per_second": (num_steps - loop_first_step) / loop_seconds
        if loop_start and loop_seconds > 0
        else None,
    }
    writer.write_summary(summary)
    writer.plot_learning_curves()
    writer.close()
    _print_table(eval_results)
    return summary
