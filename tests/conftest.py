"""Shared fixtures; the helpers tests import live in tests/helpers.py."""

import os
import shutil
import tempfile

import pytest

# Many tests compile the same small programs again (two runs compared, a run resumed in a
# subprocess, one config per host). XLA compilation dominates their time on a CPU, so the
# session shares jax's persistent compilation cache; subprocesses inherit it through the
# environment. The compiled programs are the same either way: only the waiting goes away.
_CACHE_VARIABLES = {
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}
_session_cache_dir = None


def pytest_configure(config) -> None:
    global _session_cache_dir
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return  # the caller chose a cache (or set it empty to turn caching off)
    _session_cache_dir = tempfile.mkdtemp(prefix="jax_compilation_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _session_cache_dir
    for name, value in _CACHE_VARIABLES.items():
        os.environ.setdefault(name, value)


def pytest_unconfigure(config) -> None:
    if _session_cache_dir is not None:
        shutil.rmtree(_session_cache_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """One tfds data dir for the session, so each embedded dataset is generated once."""
    return str(tmp_path_factory.mktemp("tensorflow_datasets"))


# Files holding the longest tests (a minute or more each on 2 cores) are handed out first, so
# that the two test processes (`--dist loadfile`) do not end with one running a long file alone.
LONG_FILES = (
    "test_memory_limit.py",
    "test_multi_host.py",
    "test_multi_device.py",
    "test_deploy.py",
    "test_resume.py",
    "test_determinism.py",
    "test_seq2seq_end_to_end.py",
)


def pytest_collection_modifyitems(items) -> None:
    first = {name: rank for rank, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: first.get(item.path.name, len(LONG_FILES)))  # stable
