"""Shared fixtures: a session-wide tfds data dir and helpers to run small experiments."""

import importlib.util
import json
import os
import sys
from pathlib import Path

import ml_collections
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(config_path: str, **overrides) -> ml_collections.ConfigDict:
    """The config of `experiments/.../configs/<name>.py` with `overrides` applied."""
    spec = importlib.util.spec_from_file_location("config_under_test", config_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return config


def run_experiment(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains in this process (one CPU device) and returns the summary."""
    import experiments
    from research import trainer

    return trainer.train_and_evaluate(config, str(workdir), experiments.get_task(config))


GOLDEN_DIR = Path(__file__).parent / "golden"
# Same machine and versions: bit-identical. Other CPUs or XLA versions may reorder float
# reductions, so the goldens allow a small relative difference.
GOLDEN_RELATIVE_TOLERANCE = 1e-4
GOLDEN_METRICS = ("loss", "accuracy", "mse", "r2", "token_accuracy", "exact_match", "bleu")


def check_golden(name: str, workdir) -> None:
    """The run's metric curves (train and eval) equal the golden ones stored under `name`.

    After an intended change of results: `REGENERATE_GOLDENS=1 .venv/bin/python -m pytest`.
    """
    from research import workdir as workdir_lib

    curve = [
        {k: r[k] for k in ("step", "split", *GOLDEN_METRICS) if k in r}
        for r in workdir_lib.read_metrics(workdir)
    ]
    path = GOLDEN_DIR / (name.replace("/configs/", "__").removesuffix(".py") + ".json")
    if os.environ.get("REGENERATE_GOLDENS"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(curve, indent=1) + "\n")
    golden = json.loads(path.read_text())
    assert [(r["step"], r["split"]) for r in curve] == [(r["step"], r["split"]) for r in golden]
    for record, expected in zip(curve, golden, strict=True):
        for metric in GOLDEN_METRICS:
            if metric in expected:
                assert record[metric] == pytest.approx(
                    expected[metric], rel=GOLDEN_RELATIVE_TOLERANCE, abs=1e-7
                ), (record["step"], record["split"], metric)


def launch_command(*arguments: str) -> list[str]:
    return [sys.executable, os.path.join(REPO_ROOT, "launch.py"), *arguments]


def subprocess_environment(device_count: int = 1) -> dict[str, str]:
    """The environment for a child process with `device_count` simulated CPU devices."""
    environment = dict(os.environ)
    environment["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={device_count}"
    environment["PYTHONPATH"] = REPO_ROOT
    environment["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return environment


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """One tfds data dir for the session, so each embedded dataset is generated once."""
    return str(tmp_path_factory.mktemp("tensorflow_datasets"))
