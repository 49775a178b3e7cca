"""Shared fixtures: a session-wide tfds data dir and helpers to run small experiments."""

import importlib.util
import os
import sys

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
    from research import trainer

    task = importlib.import_module(f"experiments.{config.task}.task").get_task(config)
    return trainer.train_and_evaluate(config, str(workdir), task)


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
