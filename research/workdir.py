"""The workdir contract: config.json, run.json, metrics.jsonl, summary.json, curves and events.

Only process 0 writes these files; the other processes get a writer that does nothing.
"""

import hashlib
import json
import os
import subprocess
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from research import parallel

CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CURVES_FILE = "learning_curves.png"
CHECKPOINT_DIR = "checkpoints"
ARTIFACTS_DIR = "artifacts"  # what data preparation learned, e.g. tokenizers
EXAMPLES_FILE = "examples.jsonl"


class WorkdirError(ValueError):
    """A workdir that cannot be used as asked; the message says what to do instead."""


def params_sha256(params: Any) -> str:
    """SHA-256 over the parameters' bytes, leaves in flattening (sorted key path) order."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _versions() -> dict[str, str]:
    from importlib import metadata

    packages = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-datasets")
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def run_record(data_fingerprint: str) -> dict[str, Any]:
    """What determines a run's result besides its config."""
    return {
        "versions": _versions(),
        "python": sys.version.split()[0],
        "devices": parallel.device_description(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "prng_implementation": str(jax.config.jax_default_prng_impl),
        "data_fingerprint": data_fingerprint,
        "git_commit": _git_commit(),
        "command_line": sys.argv,
    }


def check_config_matches(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Refuses a workdir that holds a run of a different config (that run is left untouched)."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return
    with open(path) as file:
        recorded = json.load(file)
    current = json.loads(config.to_json_best_effort())
    if recorded != current:
        changed = sorted(
            key for key in set(recorded) | set(current) if recorded.get(key) != current.get(key)
        )
        raise WorkdirError(
            f"Workdir {workdir} holds a run of a different config (keys differ: "
            f"{', '.join(changed)}); choose a new --workdir, or pass --overwrite to replace it."
        )


# Added to every metrics record: seconds since the run began in this process (time to target).
ELAPSED = "elapsed_s"
# Measurements of the machine, not of the run: left out when two runs' metrics are compared.
TIMING_METRICS = ("steps_per_second", ELAPSED)


class Writer:
    """Appends metrics and writes the run's records into the workdir (process 0 only)."""

    def __init__(self, workdir: str, start_time: float | None = None):
        """`start_time` (`time.time()`) is when the run began: `elapsed_s` counts from it."""
        self.workdir = workdir
        self.active = parallel.process_index() == 0
        self._tensorboard = None
        self._start_time = time.time() if start_time is None else start_time
        if self.active:
            os.makedirs(workdir, exist_ok=True)
            # Importing TensorFlow takes seconds: here, not at the first log inside the loop.
            import tensorflow as tf

            self._tensorboard = tf.summary.create_file_writer(workdir)

    def _path(self, name: str) -> str:
        return os.path.join(self.workdir, name)

    def _write_json(self, name: str, value: Any) -> None:
        if not self.active:
            return
        temporary = self._path(name + ".tmp")
        with open(temporary, "w") as file:
            json.dump(value, file, indent=2, sort_keys=True)
            file.write("\n")
        os.replace(temporary, self._path(name))  # readers never see a half-written file

    def write_config(self, config: ml_collections.ConfigDict) -> None:
        self._write_json(CONFIG_FILE, json.loads(config.to_json_best_effort()))

    def write_run(self, record: dict[str, Any]) -> None:
        self._write_json(RUN_FILE, record)

    def write_summary(self, summary: dict[str, Any]) -> None:
        self._write_json(SUMMARY_FILE, summary)

    def truncate_records_after(self, step: int) -> None:
        """Drops records past `step`, written by a run that died before its next checkpoint."""
        for name in (METRICS_FILE, EXAMPLES_FILE):
            path = self._path(name)
            if not self.active or not os.path.exists(path):
                continue
            with open(path) as file:
                records = [json.loads(line) for line in file if line.strip()]
            with open(path, "w") as file:
                for record in records:
                    if record["step"] <= step:
                        file.write(json.dumps(record) + "\n")

    def write_metrics(self, step: int, split: str, metrics: dict[str, float]) -> None:
        if not self.active:
            return
        record = {"step": step, "split": split, **{k: float(v) for k, v in metrics.items()}}
        record[ELAPSED] = round(time.time() - self._start_time, 3)
        with open(self._path(METRICS_FILE), "a") as file:
            file.write(json.dumps(record) + "\n")
        self._write_tensorboard(step, split, metrics)

    def write_examples(self, step: int, split: str, examples: list[dict]) -> None:
        """A few predictions shown beside their inputs and references (console and file)."""
        if not self.active or not examples:
            return
        with open(self._path(EXAMPLES_FILE), "a") as file:
            for example in examples:
                file.write(json.dumps({"step": step, "split": split, **example}) + "\n")
        for example in examples[:3]:
            logging.info(
                "%s example: %s", split, "  |  ".join(f"{k}: {v}" for k, v in example.items())
            )

    def _write_tensorboard(self, step: int, split: str, metrics: dict[str, float]) -> None:
        import tensorflow as tf

        with self._tensorboard.as_default(step=step):
            for name, value in metrics.items():
                tf.summary.scalar(f"{split}/{name}", float(value))
        self._tensorboard.flush()

    def plot_learning_curves(self) -> None:
        """A PNG with one panel per metric, every split on it, from metrics.jsonl."""
        if not self.active:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
        for record in read_metrics(self.workdir):
            for name, value in record.items():
                if name not in ("step", "split"):
                    points = curves.setdefault(name, {}).setdefault(record["split"], [])
                    points.append((record["step"], value))
        names = sorted(curves)
        figure, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
        for axis, name in zip(axes[0], names, strict=True):
            for split, points in sorted(curves[name].items()):
                steps, values = zip(*points, strict=True)
                axis.plot(steps, values, label=split, marker="." if len(steps) < 30 else None)
            axis.set_title(name)
            axis.set_xlabel("step")
            axis.legend()
        figure.tight_layout()
        figure.savefig(self._path(CURVES_FILE), dpi=80)
        plt.close(figure)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """The records of metrics.jsonl, in order."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as file:
        return [json.loads(line) for line in file if line.strip()]


def remove_run(workdir: str) -> None:
    """Deletes a run's records and checkpoints from `workdir` (asked for with --overwrite)."""
    import shutil

    if parallel.process_index() != 0 or not os.path.isdir(workdir):
        return
    for name in (CONFIG_FILE, RUN_FILE, METRICS_FILE, SUMMARY_FILE, CURVES_FILE, EXAMPLES_FILE):
        path = os.path.join(workdir, name)
        if os.path.exists(path):
            os.remove(path)
    for folder in (CHECKPOINT_DIR, ARTIFACTS_DIR):
        shutil.rmtree(os.path.join(workdir, folder), ignore_errors=True)
    for name in os.listdir(workdir):
        if name.startswith("events.out.tfevents"):
            os.remove(os.path.join(workdir, name))
