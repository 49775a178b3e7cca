"""Predicts from the command line with an exported model: inputs in, JSON lines out.

`python -m experiments.predict --model=DIR [FILE ...]` (stdin without files) writes one JSON
object per input, in order; an input that cannot be used gets `{"input": ..., "error": ...}`.
The command of research/deploy/predict.py, given this repository's tasks and their options.
"""

import functools

from absl import app

import experiments
from research.deploy import predict

if __name__ == "__main__":
    predict.define_flags(experiments.serving_modules())
    app.run(functools.partial(predict.main, get_task=experiments.get_task))
