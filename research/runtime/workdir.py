"""The workdir contract: config.json, run.json, metrics.jsonl, summary.json, curves and events.

Only process 0 writes these files; the other processes get a writer that does nothing.
"""

import datetime
import fcntl
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from research.core import config as config_lib
from research.errors import UserError
from research.runtime import curves as curves_lib
from research.runtime import parallel

CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CURVES_FILE = "learning_curves.png"
CHECKPOINT_DIR = "checkpoints"
ARTIFACTS_DIR = "artifacts"  # what data preparation learned, e.g. tokenizers
EXAMPLES_FILE = "examples.jsonl"
RUN_FILES = (CONFIG_FILE, RUN_FILE, METRICS_FILE, SUMMARY_FILE, CURVES_FILE, EXAMPLES_FILE)
RUN_FOLDERS = (CHECKPOINT_DIR, ARTIFACTS_DIR, "corrupt_checkpoints")


class WorkdirError(UserError, ValueError):
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
        "cpu_threads": os.environ.get("NPROC", ""),  # XLA:CPU's pool size, when fixed
        "prng_implementation": str(jax.config.jax_default_prng_impl),
        "data_fingerprint": data_fingerprint,
        "git_commit": _git_commit(),
        "command_line": sys.argv,
    }


def read_run(workdir: str) -> dict[str, Any]:
    """The run record (`run.json`) of `workdir`; {} when there is none."""
    path = os.path.join(workdir, RUN_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as file:
        return json.load(file)


def check_usable(workdir: str) -> None:
    """Refuses a workdir path that is a file or that cannot be written, before any work."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"--workdir={workdir} is a file; pass a folder path.")
    existing = workdir
    while not os.path.exists(existing):
        existing = os.path.dirname(os.path.abspath(existing))
    try:
        if not os.path.isdir(existing):
            raise NotADirectoryError(existing)
        with tempfile.TemporaryFile(dir=existing):  # unnamed: leaves the folder as it was
            pass
    except OSError:
        raise WorkdirError(
            f"--workdir={workdir} cannot be written ({existing} is read-only or not a folder); "
            "choose a workdir in a writable place."
        ) from None


class Lock:
    """Holds a lock on a workdir so that a second launch into it fails at once.

    The lock is an advisory `flock` on a file named after the workdir's real path in the
    machine's temporary folder (so the workdir itself is not touched), one per process
    index; the kernel drops it when the process dies, even by `kill -9`, so a stale lock
    file is simply taken over. The file names its holder.
    """

    def __init__(self, workdir: str):
        key = hashlib.sha256(os.path.realpath(workdir).encode()).hexdigest()[:32]
        folder = os.path.join(tempfile.gettempdir(), "research-workdir-locks")
        os.makedirs(folder, exist_ok=True)
        self.path = os.path.join(folder, f"{key}.{parallel.process_index()}")
        self._file = open(self.path, "a+")  # noqa: SIM115 (held open for the run's life)
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            raise WorkdirError(
                f"Workdir {workdir} is in use by {holder}; wait for that run to end, stop it, "
                "or choose another --workdir."
            ) from None
        started = datetime.datetime.now().isoformat(timespec="seconds")
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()} on host {socket.gethostname()} since {started}")
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()


def holds_run(workdir: str) -> bool:
    """Whether `workdir` holds records or checkpoints of a run."""
    return any(os.path.exists(os.path.join(workdir, name)) for name in RUN_FILES + RUN_FOLDERS)


# How a run is laid out on devices, not what it computes: a run resumes on another mesh.
LAYOUT_KEYS = ("mesh",)


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run recorded, merged onto `base_config()`: a run recorded before a key
    existed had that key's default behaviour, so it is read with the default."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise WorkdirError(
            f"{workdir} has no {CONFIG_FILE}; pass the workdir of a run made by launch.py."
        )
    with open(path) as file:
        return config_lib.with_defaults(json.load(file))


def check_config_matches(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Refuses a workdir that holds a run of a different config (that run is left untouched).

    Both configs are compared merged onto `base_config()` (`read_config`), so a run recorded
    before a key existed resumes under the new code.
    """
    if not os.path.exists(os.path.join(workdir, CONFIG_FILE)):
        return
    recorded = json.loads(read_config(workdir).to_json_best_effort())
    current = json.loads(config_lib.with_defaults(config).to_json_best_effort())
    missing = object()
    changed = sorted(
        key
        for key in (set(recorded) | set(current)) - set(LAYOUT_KEYS)
        if recorded.get(key, missing) != current.get(key, missing)
    )
    if changed:
        raise WorkdirError(
            f"Workdir {workdir} holds a run of a different config (keys differ: "
            f"{', '.join(changed)}); choose a new --workdir, or pass --overwrite to replace it."
        )


# Added to every metrics record: seconds since the run began in this process (time to target).
ELAPSED = "elapsed_s"
# Measurements of the machine, not of the run: left out when two runs' metrics are compared.
TIMING_METRICS = ("steps_per_second", ELAPSED)


def _open_event_file(workdir: str):
    """A new TensorBoard event file in `workdir`, written with TensorBoard's record writer
    rather than TensorFlow's (whose import takes seconds, and which tensorboard's own
    `EventFileWriter` imports when it is installed)."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
    writer = RecordWriter(open(os.path.join(workdir, name), "ab"))  # noqa: SIM115 (run-long)
    version = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
    writer.write(version.SerializeToString())
    return writer


class Writer:
    """Appends metrics and writes the run's records into the workdir (process 0 only)."""

    def __init__(self, workdir: str, start_time: float | None = None):
        """`start_time` (`time.time()`) is when the run began: `elapsed_s` counts from it."""
        self.workdir = workdir
        self.active = parallel.process_index() == 0
        self._tensorboard = None
        self._recorded: set[tuple[int, str]] = set()
        self._start_time = time.time() if start_time is None else start_time
        if self.active:
            os.makedirs(workdir, exist_ok=True)
            self._tensorboard = _open_event_file(workdir)

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

    def keep_records_until(self, step: int) -> float:
        """Drops records past `step` (written by a run that died before its next checkpoint)
        and a half-written last line, so each (step, split) is recorded once.

        Returns the `elapsed_s` of the last record kept, and continues the clock from there,
        so `elapsed_s` and `wall_time_s` count the run's time across restarts.
        """
        if not self.active:
            return 0.0
        previous = 0.0
        for name in (METRICS_FILE, EXAMPLES_FILE):
            path = self._path(name)
            if not os.path.exists(path):
                continue
            kept = [r for r in _read_records(path) if r["step"] <= step]
            if name == METRICS_FILE:
                kept = list({(r["step"], r["split"]): r for r in kept}.values())
                self._recorded = {(r["step"], r["split"]) for r in kept}
                previous = max((r.get(ELAPSED, 0.0) for r in kept), default=0.0)
            self._rewrite(path, kept)
        self._start_time -= previous
        return previous

    def _rewrite(self, path: str, records: list[dict]) -> None:
        with open(path + ".tmp", "w") as file:
            file.writelines(json.dumps(record) + "\n" for record in records)
        os.replace(path + ".tmp", path)

    def write_metrics(self, step: int, split: str, metrics: dict[str, float]) -> None:
        """Appends the record of (step, split), replacing an earlier one of the same key."""
        if not self.active:
            return
        record = {"step": step, "split": split, **{k: float(v) for k, v in metrics.items()}}
        record[ELAPSED] = round(time.time() - self._start_time, 3)
        try:
            self._append_metrics(step, split, record)
        except OSError as error:
            raise WorkdirError(
                f"Could not write {self._path(METRICS_FILE)} ({error}); the records before "
                "it are intact: free disk space, then launch the same command again to resume "
                "from the last checkpoint."
            ) from error
        self._write_tensorboard(step, split, metrics)

    def _append_metrics(self, step: int, split: str, record: dict) -> None:
        path = self._path(METRICS_FILE)
        if (step, split) in self._recorded:  # a finished run evaluated again
            others = [r for r in _read_records(path) if (r["step"], r["split"]) != (step, split)]
            self._rewrite(path, others)
        with open(path, "a") as file:
            file.write(json.dumps(record) + "\n")
        self._recorded.add((step, split))

    def write_examples(self, step: int, split: str, examples: list[dict]) -> None:
        """A few predictions shown beside their inputs and references (console and file).

        Replaces the examples of an earlier evaluation of the same (step, split), as when a
        finished run is launched again and evaluates its last step once more.
        """
        if not self.active or not examples:
            return
        path = self._path(EXAMPLES_FILE)
        earlier = _read_records(path)
        others = [r for r in earlier if (r["step"], r["split"]) != (step, split)]
        if len(others) != len(earlier):
            self._rewrite(path, others)
        with open(path, "a") as file:
            for example in examples:
                file.write(json.dumps({"step": step, "split": split, **example}) + "\n")
        for example in examples[:3]:
            logging.info(
                "%s example: %s", split, "  |  ".join(f"{k}: {v}" for k, v in example.items())
            )

    def _write_tensorboard(self, step: int, split: str, metrics: dict[str, float]) -> None:
        """One event of float32 scalars `split/name`, as `tf.summary.scalar` writes them."""
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.plugins.scalar.summary_v2 import scalar_pb

        summary = summary_pb2.Summary()
        for name, value in metrics.items():
            summary.value.extend(scalar_pb(f"{split}/{name}", float(value)).value)
        event = event_pb2.Event(wall_time=time.time(), step=step, summary=summary)
        self._tensorboard.write(event.SerializeToString())
        self._tensorboard.flush()

    def plot_learning_curves(self) -> None:
        """A PNG grid, one panel per learning metric, each split in the same colour everywhere.

        Timings and the learning rate are left out: they describe the machine and the
        schedule, not what was learned.
        """
        if not self.active:
            return
        curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
        for record in read_metrics(self.workdir):
            for name, value in record.items():
                if name not in ("step", "split", "learning_rate", *TIMING_METRICS):
                    points = curves.setdefault(name, {}).setdefault(record["split"], [])
                    points.append((record["step"], value))
        panels = {
            name: [curves_lib.line(split, points) for split, points in sorted(curves[name].items())]
            for name in sorted(curves, key=lambda name: (name != "loss", name))
        }
        if panels:
            curves_lib.draw(panels, self._path(CURVES_FILE))

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """The records of metrics.jsonl, in order; a half-written last line is left out."""
    return _read_records(os.path.join(workdir, METRICS_FILE))


def _read_records(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path, "rb") as file:
        lines = file.read().split(b"\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            if number < len(lines) - 1:  # not the last line: the file is damaged, not cut off
                raise WorkdirError(
                    f"{path} line {number} is not a JSON record; repair or delete that line."
                ) from None
            logging.warning("Dropped the half-written last line of %s.", path)
    return records


def remove_run(workdir: str) -> list[str]:
    """Deletes a run's records and checkpoints from `workdir`; returns what was removed.
    Process 0 alone calls it (the trainer's --overwrite)."""
    if not os.path.isdir(workdir):
        return []
    removed = []
    for name in sorted(os.listdir(workdir)):
        path = os.path.join(workdir, name)
        if name in RUN_FILES or name.startswith("events.out.tfevents"):
            os.remove(path)
        elif name in RUN_FOLDERS:
            shutil.rmtree(path)
        else:
            continue
        removed.append(name)
    return removed
