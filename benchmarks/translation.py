"""Translation on real data: what length bucketing buys, and a trained run's BLEU per setting.

    .venv/bin/python benchmarks/translation.py --workdir=runs/multi30k speed [--out=FILE]
    .venv/bin/python benchmarks/translation.py --workdir=runs/multi30k bleu --splits=valid \
        --beam_size=4 --length_penalty=0.6 [--average_last=5]

`speed` measures, on the run's data and tokenizer: the padding efficiency (real tokens / padded
tokens, sources and targets) of one epoch of training batches, real tokens per second of the
train step over the same steps (every shape compiled beforehand), and beam-search decoding of
a whole split with the run's trained parameters; each bucketed and padded to the full width.
`bleu` scores the run's latest (or averaged) parameters with other decoding settings, so they
can be chosen on the validation split. Nothing in the workdir is changed.
"""

import argparse
import dataclasses
import functools
import json
import os
import shutil
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import jax  # noqa: E402 (after the path is set)
import numpy as np  # noqa: E402

from research.core import data, evaluation, optimizers, steps, trainer  # noqa: E402
from research.runtime import checkpoints, parallel  # noqa: E402
from research.runtime import workdir as workdir_lib  # noqa: E402


def load_run(workdir: str, overrides: dict):
    """The run's config (with `overrides`), task, dataset, model and an initialized state."""
    from experiments.seq2seq import task as seq2seq

    config = workdir_lib.read_config(workdir)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        target = config
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    task = seq2seq.get_task(config)
    dataset = task.load_data(os.path.join(workdir, workdir_lib.ARTIFACTS_DIR))
    model = task.create_model(dataset.info)
    optimizer = optimizers.create_optimizer(config)
    example = {key: value[:1] for key, value in dataset.train.items()}
    state = steps.create_train_state(
        jax.random.PRNGKey(0), model, task, example, optimizer, ema=config.ema_decay > 0
    )
    # The state only gives restored checkpoints their structure.
    return config, task, dataset, model, state


def trained_state(workdir: str, state, average_last: int):
    directory = os.path.join(workdir, workdir_lib.CHECKPOINT_DIR)
    if average_last > 1:
        return checkpoints.average_of_last(directory, average_last, state)
    step = checkpoints.saved_steps(directory)[-1]
    return checkpoints.restore_state(directory, step, state), [step]


def _tokens(batch: dict) -> tuple[int, int]:
    """(real, padded) token counts of a batch's sources and targets."""
    real = sum(int((batch[key] != 0).sum()) for key in ("inputs", "targets"))
    return real, sum(batch[key].size for key in ("inputs", "targets"))


def train_speed(config, task, dataset, num_steps: int):
    """Padding efficiency of one epoch and real tokens/s of `num_steps` train steps, with the
    step, state and batches of `trainer.setup` (bucketed as `config.bucket_boundaries` says)."""
    workdir = tempfile.mkdtemp(prefix="translation_speed_")
    try:
        loaded = dataclasses.replace(task, load_data=lambda artifacts_dir: dataset)
        run = trainer.setup(config, workdir, loaded)
        run.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    batches_per_epoch = data.num_examples(dataset.train) // config.batch_size
    epoch = [run.source.batch(step) for step in range(batches_per_epoch)]
    counts = np.array([_tokens(batch) for batch in epoch])
    train_step, state, rng = run.train_step, run.state, run.train_rng
    timed = epoch[:num_steps]
    compile_start = time.perf_counter()
    for length in sorted({batch["inputs"].shape[1] for batch in timed}):  # compile each shape
        batch = next(b for b in timed if b["inputs"].shape[1] == length)
        state, metrics = train_step(state, parallel.put_batch(batch, run.mesh), rng)
        jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - compile_start
    start = time.perf_counter()
    for batch in timed:
        state, metrics = train_step(state, parallel.put_batch(batch, run.mesh), rng)
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - start
    return {
        "padding_efficiency": float(counts[:, 0].sum() / counts[:, 1].sum()),
        "shapes_per_epoch": len({batch["inputs"].shape[1] for batch in epoch}),
        "timed_steps": num_steps,
        "seconds_per_step": seconds / num_steps,
        "real_tokens_per_s": float(counts[:num_steps, 0].sum() / seconds),
        "padded_tokens_per_s": float(counts[:num_steps, 1].sum() / seconds),
        "compile_and_first_steps_s": compile_s,
    }


def decode_speed(config, task, dataset, model, state, split: str, buckets):
    """Seconds and real tokens/s of beam search over `split`, with its BLEU (second pass)."""
    arrays = dataset.eval_splits[split]
    predict_step = jax.jit(functools.partial(steps.predict_step, model=model, task=task))
    mesh = parallel.make_mesh(config.mesh)
    device_state = parallel.put_replicated(state, mesh)
    batch_size = config.eval_batch_size
    evaluation.predictions_of_split(predict_step, device_state, arrays, batch_size, mesh, buckets)
    start = time.perf_counter()
    predictions = evaluation.predictions_of_split(
        predict_step, device_state, arrays, batch_size, mesh, buckets
    )
    seconds = time.perf_counter() - start
    counts = np.array([_tokens(b) for b in data.eval_batches(arrays, batch_size, buckets)])
    output_tokens = int((predictions != 0).sum())
    scores, _ = task.score_predictions(split, predictions, dataset.evaluation_context)
    return {
        "split": split,
        "seconds": seconds,
        "input_padding_efficiency": float(counts[:, 0].sum() / counts[:, 1].sum()),
        "output_tokens_per_s": output_tokens / seconds,
        "bleu": scores["bleu"],
    }


def tokens_seen(config, dataset, buckets) -> dict:
    """Real source and target tokens (EOS included) of every training batch of the run."""
    source = target = 0
    for step in range(config.num_train_steps):
        batch = data.train_batch(dataset.train, config.batch_size, config.seed, step, buckets)
        source += int((batch["inputs"] != 0).sum())
        target += int((batch["targets"] != 0).sum())
    return {"steps": config.num_train_steps, "source_tokens": source, "target_tokens": target}


def measure_speed(arguments) -> dict:
    config, task, dataset, model, state = load_run(arguments.workdir, {})
    boundaries = tuple(config.bucket_boundaries)
    trained, _ = trained_state(arguments.workdir, state, 0)
    results = {"workdir": arguments.workdir, "devices": parallel.device_description()}
    run_buckets = data.length_buckets(dataset.train, task.sequence_keys, boundaries)
    results["run_tokens_seen"] = tokens_seen(config, dataset, run_buckets)
    print("tokens seen by the run", results["run_tokens_seen"], flush=True)
    for mode, bucketed in (("full_width", False), ("bucketed", True)):
        mode_config = config.copy_and_resolve_references()
        mode_config.bucket_boundaries = boundaries if bucketed else ()
        split_buckets = (
            data.length_buckets(
                dataset.eval_splits[arguments.decode_split], task.sequence_keys, boundaries
            )
            if bucketed
            else None
        )
        results[mode] = {
            "train": train_speed(mode_config, task, dataset, arguments.steps),
            "decode": decode_speed(
                config, task, dataset, model, trained, arguments.decode_split, split_buckets
            ),
        }
        print(mode, json.dumps(results[mode], indent=1), flush=True)
    return results


def measure_bleu(arguments) -> dict:
    overrides = {
        "decode.beam_size": arguments.beam_size,
        "decode.length_penalty": arguments.length_penalty,
    }
    config, task, dataset, model, state = load_run(arguments.workdir, overrides)
    trained, averaged = trained_state(arguments.workdir, state, arguments.average_last)
    predict_step = jax.jit(functools.partial(steps.predict_step, model=model, task=task))
    mesh = parallel.make_mesh(config.mesh)
    device_state = parallel.put_replicated(trained, mesh)
    results = {"checkpoints": averaged, **overrides}
    for split in arguments.splits.split(","):
        arrays = dataset.eval_splits[split]
        buckets = data.length_buckets(arrays, task.sequence_keys, tuple(config.bucket_boundaries))
        predictions = evaluation.predictions_of_split(
            predict_step, device_state, arrays, config.eval_batch_size, mesh, buckets
        )
        scores, details = task.score_predictions(split, predictions, dataset.evaluation_context)
        results[split] = {**scores, "signature": details["sacrebleu_signature"]}
    print(json.dumps(results, indent=1), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a seq2seq run's workdir")
    parser.add_argument("--out", help="also write the results to this JSON file")
    commands = parser.add_subparsers(dest="command", required=True)
    speed = commands.add_parser("speed")
    speed.add_argument("--steps", type=int, default=30, help="train steps timed per mode")
    speed.add_argument("--decode_split", default="valid")
    bleu = commands.add_parser("bleu")
    bleu.add_argument("--splits", default="valid")
    bleu.add_argument("--beam_size", type=int, default=4)
    bleu.add_argument("--length_penalty", type=float, default=0.6)
    bleu.add_argument("--average_last", type=int, default=0, help="checkpoints to average")
    arguments = parser.parse_args()
    jax.config.update(
        "jax_compilation_cache_dir", os.path.expanduser("~/.cache/research/jax_compilation_cache")
    )
    results = measure_speed(arguments) if arguments.command == "speed" else measure_bleu(arguments)
    if arguments.out:
        with open(arguments.out, "w") as file:
            json.dump(results, file, indent=1)


if __name__ == "__main__":
    main()
