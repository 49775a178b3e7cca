"""The experiments, one package per task; `get_task(config)` is the one way to get a task.

Task modules are imported on first use, so a run pays only for its own task's libraries. The
commands that need a task get it here: `launch.py` (training), and `python -m experiments.export`,
`experiments.predict` and `experiments.serve` (research/deploy/ with these tasks).
"""

import importlib
import importlib.util
from types import ModuleType

import ml_collections

from research.core.config import ConfigError
from research.core.task import Task

TASKS = ("regression", "image_classification", "seq2seq", "language_modeling")


def get_task(config: ml_collections.ConfigDict) -> Task:
    """The `Task` that `config.task` names, built from the config."""
    if config.task not in TASKS:
        raise ConfigError(
            f"config.task '{config.task}' is not a task here; set --config.task to one of "
            f"{', '.join(TASKS)}."
        )
    return importlib.import_module(f"experiments.{config.task}.task").get_task(config)


def serving_modules() -> dict[str, ModuleType]:
    """{task: its serving module (`experiments/<task>/serving.py`)}, for the task options that
    the export, predict and serve commands take as flags."""
    return {
        task: importlib.import_module(f"experiments.{task}.serving")
        for task in TASKS
        if importlib.util.find_spec(f"experiments.{task}.serving")
    }
