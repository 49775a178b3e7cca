"""Runs a sweep's points as child processes, records each outcome in sweep.json.

Each point is an ordinary `launch.py` command; with several at once each gets its share of
the cores (and GPUs) and thread pools of that size.
"""

import concurrent.futures
import datetime
import fcntl
import hashlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from research.errors import UserError

SWEEP_FILE = "sweep.json"
OWNER_FILE = ".sweep.owner"  # locked for the life of the sweep process that runs the root
POLL_SECONDS = 1.0  # how often a sweep looks whether a run it waits for has ended
LOG_DIR = "logs"  # one log per point, beside (not inside) the workdirs
# Thread pools of the libraries a run uses besides XLA (which sizes its pool by the affinity).
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
)


class SweepError(UserError, ValueError):
    """A sweep that cannot run as asked; the message says what to change."""


class Record:
    """sweep.json, updated under a file lock so that several sweep processes can share it."""

    def __init__(self, root: str):
        self.root = root
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

    def start(self, planned: dict) -> list[dict]:
        """Writes the plan, or matches it to the one already there by each point's values
        (statuses are kept). Returns the points to run: on an existing root in its order and
        under its names, so that a respelled or reordered grid runs no point twice."""
        with self._locked():
            existing = self.read()
            if existing is None:
                sweep = {
                    **planned,
                    "points": [
                        {
                            "name": p["name"],
                            "values": p["values"],
                            "command": p["command"],
                            "status": "pending",
                        }
                        for p in planned["points"]
                    ],
                }
                self._write(sweep)
                return planned["points"]
        for key in ("config", "overrides"):
            there, here = existing[key], json.loads(json.dumps(planned[key]))
            if key == "overrides":
                there, here = sorted(there), sorted(here)
            if there != here:
                raise SweepError(
                    f"{self.path} describes another sweep ({key} differs: {there} there); "
                    "choose a new --root or the same flags."
                )
        planned_by_values = {canonical(p["values"]): p for p in planned["points"]}
        recorded = {canonical(p["values"]): p for p in existing["points"]}
        if set(planned_by_values) != set(recorded):
            missing = sorted(set(recorded) - set(planned_by_values))
            extra = sorted(set(planned_by_values) - set(recorded))
            difference = f"{missing[0]} only there" if missing else f"{extra[0]} only here"
            raise SweepError(
                f"{self.path} describes another sweep (its points differ: {difference}); "
                "choose a new --root or the same --grid."
            )
        points = []
        for key, point in recorded.items():
            mine = planned_by_values[key]
            workdir = os.path.join(self.root, point["name"])
            command = [
                f"--workdir={workdir}" if arg.startswith("--workdir=") else arg
                for arg in mine["command"]
            ]
            points.append({**mine, "name": point["name"], "command": command})
        return points

    def update(self, index: int, **fields) -> None:
        with self._locked():
            sweep = self.read()
            sweep["points"][index] = {**sweep["points"][index], **fields}
            self._write(sweep)


class Owner:
    """Marks a root as being run: a whole sweep holds it alone, `--point` runs (one point
    each, as cluster tasks) share it. An `flock`, so it dies with its process, even `kill -9`."""

    def __init__(self, root: str, shared: bool = False):
        self._file = open(os.path.join(root, OWNER_FILE), "a+")  # noqa: SIM115 (held open)
        try:
            fcntl.flock(self._file, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = _living_holder(self._file.read().strip()) or "--point runs of it"
            self._file.close()
            raise SweepError(
                f"{root} is being run by another sweep ({holder}); wait for it to end, stop it, "
                "or choose another --root."
            ) from None
        if not shared:
            started = datetime.datetime.now().isoformat(timespec="seconds")
            self._file.seek(0)
            self._file.truncate()
            self._file.write(f"pid {os.getpid()} on host {socket.gethostname()} since {started}")
            self._file.flush()


def _living_holder(text: str) -> str | None:
    """`text` ('pid N on host H since T') if that process still runs on this host, else None."""
    words = text.split()
    if len(words) < 5 or words[0] != "pid" or words[3] != socket.gethostname():
        return text or None
    try:
        os.kill(int(words[1]), 0)
    except (ValueError, ProcessLookupError):
        return None
    except PermissionError:
        pass  # another user's process: alive
    return text


def workdir_holder(workdir: str) -> str | None:
    """Who holds `workdir`'s launch lock (`research.runtime.workdir.Lock`, process 0), or None.

    Read without importing jax (which would take the accelerators from the points): the lock
    file's name follows `Lock`'s own scheme, which tests/test_issue26_sweeps.py checks.
    """
    key = hashlib.sha256(os.path.realpath(workdir).encode()).hexdigest()[:32]
    path = os.path.join(tempfile.gettempdir(), "research-workdir-locks", f"{key}.0")
    try:
        file = open(path)  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        return None
    with file:
        try:
            fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return file.read().strip() or "another process"
        fcntl.flock(file, fcntl.LOCK_UN)
    return None


def canonical(values: object) -> str:
    """A point's identity: its parsed values, keys sorted (so 1e-3 and 0.001 are one point)."""
    return json.dumps(values, sort_keys=True)


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
    shares = [
        devices[i * size : (i + 1) * size] or [devices[i % len(devices)]] for i in range(parallel)
    ]
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
        self._printing = threading.Lock()

    def stop(self, signum, frame) -> None:  # noqa: ARG002 (signal handler signature)
        """SIGTERM: no new points; running ones are told to checkpoint and stop."""
        self.stopping = True
        with self._guard:
            for child in self._children:
                child.send_signal(signal.SIGTERM)

    def say(self, line: str) -> None:
        """Prints one status line whole: `print` from several threads can interleave."""
        with self._printing:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def run(self, index: int, point: dict, cores=None, devices=None) -> str:
        workdir = os.path.join(self.root, point["name"])
        if is_finished(workdir, point["config"]):
            self.record.update(index, status="finished")
            self.say(f"{point['name']}: finished before, skipped")
            return "finished"
        if self.stopping:
            return "pending"
        holder = workdir_holder(workdir)
        if holder:  # launched by an earlier sweep process that was killed: wait for it
            self.record.update(index, status="running", error=None, adopted=holder)
            self.say(f"{point['name']}: still running ({holder}); waiting for it")
            while holder and not self.stopping:
                time.sleep(POLL_SECONDS)
                holder = workdir_holder(workdir)
            if self.stopping:
                return "pending"
            if is_finished(workdir, point["config"]):
                self.record.update(index, status="finished", adopted=None)
                self.say(f"{point['name']}: finished")
                return "finished"
            # It stopped unfinished (failed or interrupted): launching it again resumes it.
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
                if self.stopping:  # the signal came while this child was starting
                    child.send_signal(signal.SIGTERM)
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
        self.say(f"{point['name']}: {status}" + (f" ({error})" if error else ""))
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
    try:
        # Until one point has finished, one runs alone: it prepares the data (and fills the
        # compilation cache) that the others then share instead of preparing it at once.
        if parallel > 1 and not any(
            is_finished(os.path.join(runner.root, p["name"]), p["config"]) for p in points
        ):
            outcomes.append(in_slot(order.pop(0)))
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            outcomes += list(pool.map(in_slot, order))
    except KeyboardInterrupt:  # Ctrl-C reached the children too: they checkpoint and stop
        runner.stopping = True  # points not yet started stay pending
        raise
    return {status: outcomes.count(status) for status in sorted(set(outcomes))}
