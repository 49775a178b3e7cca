"""Exports a run's checkpoint as a directory that runs with only jax and numpy.

`python -m experiments.export --workdir=RUN --out=DIR [--step=N]` writes the task's inference
functions (StableHLO, symbolic batch size, lowered for CPU, CUDA and TPU), the parameters, the
task's preprocessing assets, `signature.json` and `serving_runtime.py`.
The command of research/deploy/export.py, given this repository's tasks and their options.
"""

import functools

from absl import app

import experiments
from research.deploy import export

if __name__ == "__main__":
    export.define_flags(experiments.serving_modules())
    app.run(functools.partial(export.main, get_task=experiments.get_task))
