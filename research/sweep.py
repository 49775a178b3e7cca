"""Runs the cross product of a grid of config values, each point an ordinary `launch.py` run.

    python -m research.sweep --config=PATH[:arg] --root=DIR --grid='learning_rate=1e-3,3e-3 seed=0,1,2'
        [--parallel=N] [--config.key=value ...] [--print_commands] [--point=INDEX]
"""

import ast
import concurrent.futures
import datetime
import fcntl
import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from typing import Any

from absl import app, flags
from ml_collections import config_flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # config files import `research` and `experiments`
    sys.path.insert(0, REPO_ROOT)

from research.errors import UserError  # noqa: E402 (after the path is set)

SWEEP_FILE = "sweep.json"
LOG_DIR = "logs"  # one log per point, beside (not inside) the workdirs
# Thread pools of the libraries a run uses besides XLA (which sizes its pool by the affinity).
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
)

flags.DEFINE_string("root", None, "Folder of the sweep: one workdir per point, and sweep.json.")
flags.DEFINE_string("grid", None, "Values per key: 'learning_rate=1e-3,3e-3 seed=0,1,2'.")
flags.DEFINE_integer("parallel", 1, "How many points run at once, each on its share of cores.")
flags.DEFINE_bool("print_commands", False, "Print each point's launch.py command and exit.")
flags.DEFINE_integer("point", None, "Run only the point of this index (one per cluster task).")
FLAGS = flags.FLAGS


class SweepError(UserError, ValueError):
    """A sweep that cannot run as asked; the message says what to change."""


def split_values(text: str) -> list[str]:
    """'1e-3,(64, 64),x' -> ['1e-3', '(64, 64)', 'x']: commas inside brackets stay."""
    values, depth, current = [], 0, ""
    for character in text:
        depth += character in "([{"
        depth -= character in ")]}"
        if character == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += character
    values.append(current.strip())
    return values


def _lookup(config, key: str) -> Any:
    target = config
    for part in key.split("."):
        if not hasattr(target, "keys") or part not in target:
            raise SweepError(
                f"--grid key '{key}' is not a key of the config; use one of its keys "
                "(`python launch.py --config=... --helpfull` lists them) or fix the spelling."
            )
        target = target[part]
    return target


def parse_value(key: str, text: str, default: Any) -> Any:
    """`text` as a value of `default`'s type, or a `SweepError` naming the key."""
    expected = type(default).__name__
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return text.lower() == "true"
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, str):
            return text
        if isinstance(default, tuple | list) or default is None:
            value = ast.literal_eval(text)
            if default is not None and not isinstance(value, tuple | list):
                raise ValueError(text)
            return tuple(value) if isinstance(value, list) else value
    except (ValueError, SyntaxError):
        pass
    raise SweepError(
        f"--grid value '{text}' of {key} is not of the config's type ({expected}, default "
        f"{default!r}); give {key} values like {default!r}."
    )


def parse_grid(text: str, config) -> dict[str, list[tuple[str, Any]]]:
    """'lr=1e-3,3e-3 seed=0,1' -> {key: [(text, value), ...]}, checked against `config`."""
    grid = {}
    for item in re.split(r"\s+(?=[\w.]+=)", (text or "").strip()):
        key, equals, values = item.partition("=")
        if not equals or not key or not values:
            raise SweepError(
                f"--grid item '{item}' is not key=value,value; write the grid like "
                "--grid='learning_rate=1e-3,3e-3 seed=0,1,2'."
            )
        if key in grid:
            raise SweepError(f"--grid names {key} twice; give all its values in one item.")
        default = _lookup(config, key)
        if hasattr(default, "keys"):
            raise SweepError(f"--grid key '{key}' is a group of keys; sweep one of its keys.")
        texts = split_values(values)
        grid[key] = [(value, parse_value(key, value, default)) for value in texts]
    return grid


def point_name(values: dict[str, str]) -> str:
    """The workdir name of a point: 'learning_rate=1e-3_seed=0' (unsafe characters -> '-')."""
    parts = []
    for key, text in values.items():
        text = re.sub(r"[\s()\[\]]", "", text).replace(",", "-").strip("-") or "empty"
        parts.append(re.sub(r"[^\w.=+-]", "-", f"{key}={text}"))
    return "_".join(parts)


def plan(config_argument: str, root: str, grid: dict, overrides: list[str], config) -> dict:
    """The sweep record: the grid and every point's name, values, expected config and command."""
    points = [{}]
    for key, options in grid.items():
        points = [{**point, key: option} for point in points for option in options]
    records = []
    for point in points:
        texts = {key: text for key, (text, _) in point.items()}
        name = point_name(texts)
        resolved = config.copy_and_resolve_references()
        with resolved.unlocked():
            for key, (_, value) in point.items():
                *parents, leaf = key.split(".")
                target = resolved
                for parent in parents:
                    target = target[parent]
                target[leaf] = value
        command = [sys.executable, os.path.join(REPO_ROOT, "launch.py")]
        command += [f"--config={config_argument}", f"--workdir={os.path.join(root, name)}"]
        command += overrides + [f"--config.{key}={text}" for key, text in texts.items()]
        records.append(
            {
                "name": name,
                "values": {key: value for key, (_, value) in point.items()},
                "config": json.loads(resolved.to_json_best_effort()),
                "command": command,
            }
        )
    names = [record["name"] for record in records]
    if len(set(names)) != len(names):
        raise SweepError("--grid gives two points the same name; list each value once.")
    grid_record = {key: [value for _, value in options] for key, options in grid.items()}
    return {"config": config_argument, "overrides": overrides, "grid": grid_record,
            "points": records}  # fmt: skip


class Record:
    """sweep.json, updated under a file lock so that several sweep processes can share it."""

    def __init__(self, root: str):
        self.path = os.path.join(root, SWEEP_FILE)
        self._lock_path = os.path.join(root, f".{SWEEP_FILE}.lock")

    def _locked(self):
        file = open(self._lock_path, "a")  # noqa: SIM115 (closed by the caller)
        fcntl.flock(file, fcntl.LOCK_EX)
        return file

    def read(self) -> dict | None:
        if not os.path.exists(self.path):
            return None
        with open(self.path) as file:
            return json.load(file)

    def _write(self, sweep: dict) -> None:
        with open(self.path + ".tmp", "w") as file:
            json.dump(sweep, file, indent=2)
            file.write("\n")
        os.replace(self.path + ".tmp", self.path)

    def start(self, planned: dict) -> dict:
        """Writes the plan, or checks it against the one already there (statuses are kept)."""
        with self._locked():
            existing = self.read()
            if existing is not None:
                for key in ("config", "overrides", "grid"):
                    if existing[key] != planned[key]:
                        raise SweepError(
                            f"{self.path} describes another sweep ({key} differs: "
                            f"{existing[key]} there); choose a new --root or the same flags."
                        )
                return existing
            sweep = {**planned, "points": [
                {"name": p["name"], "values": p["values"], "command": p["command"],
                 "status": "pending"} for p in planned["points"]]}  # fmt: skip
            self._write(sweep)
            return sweep

    def update(self, index: int, **fields) -> None:
        with self._locked():
            sweep = self.read()
            sweep["points"][index] = {**sweep["points"][index], **fields}
            self._write(sweep)


def is_finished(workdir: str, config: dict) -> bool:
    """A point is done when its workdir has a summary and the config it was asked to run."""
    try:
        with open(os.path.join(workdir, "config.json")) as file:
            recorded = json.load(file)
    except (OSError, json.JSONDecodeError):
        return False
    return recorded == config and os.path.exists(os.path.join(workdir, "summary.json"))


def core_shares(parallel: int) -> list[list[int]]:
    """This process's cores split into `parallel` disjoint shares (shared when too few)."""
    cores = sorted(os.sched_getaffinity(0))
    if parallel >= len(cores):
        return [[cores[i % len(cores)]] for i in range(parallel)]
    size = len(cores) // parallel
    return [cores[i * size : (i + 1) * size] for i in range(parallel)]


def device_shares(parallel: int) -> list[str | None]:
    """CUDA devices split like the cores; None (inherit) where there are no GPUs to split."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None and shutil.which("nvidia-smi"):
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
        visible = ",".join(str(i) for i in range(listing.count("GPU ")))
    devices = [d for d in (visible or "").split(",") if d.strip()]
    if len(devices) < 2 or parallel < 2:
        return [None] * parallel
    size = max(1, len(devices) // parallel)
    shares = [devices[i * size : (i + 1) * size] or [devices[i % len(devices)]]
              for i in range(parallel)]  # fmt: skip
    return [",".join(share) for share in shares]


def environment(cores: list[int] | None, devices: str | None) -> dict[str, str]:
    """The child's environment: thread pools no larger than its cores, its devices only."""
    env = dict(os.environ)
    if cores is not None:
        for name in THREAD_VARIABLES:
            env[name] = str(len(cores))
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = devices
    return env


def last_line(path: str) -> str:
    with open(path, errors="replace") as file:
        lines = [line.strip() for line in file if line.strip()]
    return lines[-1] if lines else "no output"


class Runner:
    """Runs points in child processes and records each one's outcome in sweep.json."""

    def __init__(self, root: str, record: Record):
        self.root, self.record = root, record
        self.stopping = False
        self._children: set[subprocess.Popen] = set()
        self._guard = threading.Lock()

    def stop(self, signum, frame) -> None:  # noqa: ARG002 (signal handler signature)
        """SIGTERM: no new points; running ones are told to checkpoint and stop."""
        self.stopping = True
        with self._guard:
            for child in self._children:
                child.send_signal(signal.SIGTERM)

    def run(self, index: int, point: dict, cores=None, devices=None) -> str:
        workdir = os.path.join(self.root, point["name"])
        if is_finished(workdir, point["config"]):
            self.record.update(index, status="finished")
            return "finished"
        if self.stopping:
            return "pending"
        os.makedirs(os.path.join(self.root, LOG_DIR), exist_ok=True)
        log_path = os.path.join(self.root, LOG_DIR, point["name"] + ".log")
        command = point["command"]
        if cores is not None and shutil.which("taskset"):
            command = ["taskset", "-c", ",".join(map(str, cores)), *command]
        now = datetime.datetime.now().isoformat(timespec="seconds")
        self.record.update(index, status="running", started=now, error=None, pid=None)
        with open(log_path, "a") as log:
            child = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=environment(cores, devices)
            )
            with self._guard:
                self._children.add(child)
            if cores is not None and not shutil.which("taskset"):
                os.sched_setaffinity(child.pid, cores)
            self.record.update(index, pid=child.pid)
            code = child.wait()
            with self._guard:
                self._children.discard(child)
        ended = datetime.datetime.now().isoformat(timespec="seconds")
        if code == 0 and is_finished(workdir, point["config"]):
            status, error = "finished", None
        elif code == 0:  # stopped by a signal after a checkpoint: the next sweep resumes it
            status, error = "interrupted", last_line(log_path)
        else:
            status, error = "failed", last_line(log_path)
        self.record.update(index, status=status, error=error, ended=ended, return_code=code)
        print(f"{point['name']}: {status}" + (f" ({error})" if error else ""), flush=True)
        return status


def run_all(runner: Runner, planned: dict, parallel: int) -> dict[str, int]:
    """Runs every point, `parallel` at a time; returns how many ended in each status."""
    points = planned["points"]
    slots: queue.Queue = queue.Queue()
    share_cores = core_shares(parallel) if parallel > 1 else [None]
    share_devices = device_shares(parallel) if parallel > 1 else [None]
    for slot in range(max(1, parallel)):
        slots.put(slot)

    def in_slot(index: int) -> str:
        slot = slots.get()
        try:
            return runner.run(index, points[index], share_cores[slot], share_devices[slot])
        finally:
            slots.put(slot)

    outcomes: list[str] = []
    order = list(range(len(points)))
    # Until one point has finished, one runs alone: it prepares the data (and fills the
    # compilation cache) that the others then share instead of preparing it at once.
    if parallel > 1 and not any(
        is_finished(os.path.join(runner.root, p["name"]), p["config"]) for p in points
    ):
        outcomes.append(in_slot(order.pop(0)))
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        outcomes += list(pool.map(in_slot, order))
    return {status: outcomes.count(status) for status in sorted(set(outcomes))}


def forwarded_overrides(argv: list[str]) -> list[str]:
    """The --config.<key>=<value> flags, passed on to every point unchanged."""
    return [arg for arg in argv if arg.startswith("--config.")]


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise SweepError(f"unexpected arguments {argv[1:]}; pass settings as flags.")
    if not FLAGS.root or not FLAGS.grid:
        raise SweepError("--root and --grid are required; see `python -m research.sweep --help`.")
    if FLAGS.parallel < 1:
        raise SweepError(f"--parallel={FLAGS.parallel}; pass 1 or more.")
    config = FLAGS.config
    grid = parse_grid(FLAGS.grid, config)
    overrides = forwarded_overrides(sys.argv)
    both = [o for o in overrides if o.split("=")[0].removeprefix("--config.") in grid]
    if both:
        raise SweepError(f"{both[0].split('=')[0]} is also in --grid; give it in one place.")
    config_argument = FLAGS["config"].config_filename
    path, colon, argument = config_argument.partition(":")
    config_argument = os.path.abspath(path) + colon + argument
    root = os.path.abspath(FLAGS.root)
    planned = plan(config_argument, root, grid, overrides, config)
    if FLAGS.print_commands:
        print("\n".join(shlex.join(point["command"]) for point in planned["points"]))
        return
    if FLAGS.point is not None and not 0 <= FLAGS.point < len(planned["points"]):
        raise SweepError(
            f"--point={FLAGS.point} is outside the grid's {len(planned['points'])} points; "
            f"pass 0 to {len(planned['points']) - 1}."
        )
    os.makedirs(root, exist_ok=True)
    record = Record(root)
    record.start(planned)
    runner = Runner(root, record)
    signal.signal(signal.SIGTERM, runner.stop)
    if FLAGS.point is not None:
        status = runner.run(FLAGS.point, planned["points"][FLAGS.point])
        sys.exit(0 if status == "finished" else 1)
    counts = run_all(runner, planned, FLAGS.parallel)
    print(f"{root}: " + ", ".join(f"{count} {status}" for status, count in counts.items()))
    sys.exit(0 if set(counts) == {"finished"} else 1)


def _run(argv: list[str]) -> None:
    try:
        main(argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        remaining = FLAGS(argv)
        FLAGS.config.keys()  # the config file is loaded (and may fail) on first access
    except Exception as error:  # config_flags raises several types for bad input
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
    return remaining


if __name__ == "__main__":
    sys.argv = [
        f"--config={os.path.join(REPO_ROOT, a[9:])}"
        if a.startswith("--config=") and not os.path.exists(a[9:].split(":")[0])
        and os.path.exists(os.path.join(REPO_ROOT, a[9:].split(":")[0]))
        else a
        for a in sys.argv
    ]  # fmt: skip
    config_flags.DEFINE_config_file("config", None, "Experiment config file, `path.py[:arg]`.")
    app.run(_run, flags_parser=_parse_flags)
