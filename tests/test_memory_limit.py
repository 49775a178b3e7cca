"""Training through Grain on a dataset several times larger than the memory the training
process may use (a cgroup memory limit), resumed exactly after `kill -9`."""

import os
import shutil
import signal
import subprocess
import sys

import pytest

from research.runtime import workdir as workdir_lib
from tests import helpers

CGROUP_ROOT = "/sys/fs/cgroup/memory"
LIMIT_BYTES = 1536 * 2**20  # the training process and its Grain worker together
IMAGES = 25_000  # 128x128x3: 1.2 GB of uint8 on disk, 4.9 GB as the float32 arrays trained on
FLOAT32_BYTES = IMAGES * 128 * 128 * 3 * 4


def _own_memory_cgroup() -> str | None:
    """This process's cgroup v1 memory folder, if it exists and may be written (root)."""
    with open("/proc/self/cgroup") as groups:
        for line in groups:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if "memory" in controllers.split(","):
                folder = CGROUP_ROOT + path
                return folder if os.access(folder, os.W_OK) else None
    return None


@pytest.fixture
def memory_limited(tmp_path):
    """A function running the memory-limited runner in a child cgroup of `LIMIT_BYTES`."""
    parent = _own_memory_cgroup()
    if parent is None:
        pytest.skip("needs a writable cgroup v1 memory controller (root on Linux)")
    group = os.path.join(parent, f"memory_limit_test_{os.getpid()}")
    os.mkdir(group)
    with open(os.path.join(group, "memory.limit_in_bytes"), "w") as limit:
        limit.write(str(LIMIT_BYTES))

    def join_group():  # in the child, before it starts Python: its Grain worker joins too
        with open(os.path.join(group, "cgroup.procs"), "w") as procs:
            procs.write(str(os.getpid()))

    def run(*arguments):
        command = [sys.executable, "-m", "tests.memory_limited_run", *map(str, arguments)]
        return subprocess.run(
            command, cwd=helpers.REPO_ROOT, env=helpers.subprocess_environment(),
            capture_output=True, text=True, timeout=600, preexec_fn=join_group,
        )  # fmt: skip

    yield run
    os.rmdir(group)  # fails if a process were left in it


def test_grain_trains_on_data_larger_than_memory_and_resumes_after_kill_9(memory_limited, tmp_path):
    data_dir = tmp_path / "data"
    generated = helpers.run_command(
        [sys.executable, "-m", "tests.memory_limited_run", "generate", str(data_dir), str(IMAGES)]
    )
    assert generated.returncode == 0, generated.stderr[-2000:]
    assert FLOAT32_BYTES > 3 * LIMIT_BYTES

    # The limit binds: the in-memory path, which loads the whole split, is killed by it.
    loaded = memory_limited("train", data_dir, tmp_path / "memory", "memory", 0)
    assert loaded.returncode == -signal.SIGKILL, loaded.stderr[-2000:]

    whole = memory_limited("train", data_dir, tmp_path / "whole", "grain", 0)
    assert whole.returncode == 0, whole.stderr[-3000:]

    # kill -9 before step 11: checkpoints are written in the background, so step 8's may or
    # may not be complete; step 4's is (step 8's save waits for it).
    killed = memory_limited("train", data_dir, tmp_path / "resumed", "grain", 10)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    checkpoints = tmp_path / "resumed" / workdir_lib.CHECKPOINT_DIR
    assert sorted(int(name) for name in os.listdir(checkpoints) if name.isdigit()) in ([4], [4, 8])
    resumed = memory_limited("train", data_dir, tmp_path / "resumed", "grain", 0)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    sha = lambda result: result.stdout.split("params_sha256 ")[1].split()[0]
    assert sha(resumed) == sha(whole)
    curve = lambda name: [
        {k: v for k, v in r.items() if k not in workdir_lib.TIMING_METRICS}
        for r in workdir_lib.read_metrics(tmp_path / name)
    ]
    assert curve("resumed") == curve("whole")
    shutil.rmtree(data_dir)  # 1.2 GB: not kept among pytest's last three temporary folders
