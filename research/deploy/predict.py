"""Predicts from the command line with an exported model: inputs in, JSON lines out.

`python -m experiments.predict --model=DIR [FILE ...]` (stdin without files) writes one JSON
object per input, in order; an input that cannot be used gets `{"input": ..., "error": ...}`.
"""

import sys
import tempfile
from types import ModuleType

from absl import app, flags

from research.core.task import TaskLookup
from research.deploy import export, inference
from research.deploy import options as options_lib
from research.errors import UserError

FLAGS = flags.FLAGS
# The flags `define_flags` defines are the command's (its --help lists them), not this module's.
flags.disclaim_key_flags()


def define_flags(serving_modules: dict[str, ModuleType]) -> None:
    """The flags predict and serve share: which model, and the `PREDICT_OPTIONS` of
    `serving_modules` ({task: its serving module})."""
    flags.DEFINE_string("model", None, "An exported directory (python -m experiments.export).")
    flags.DEFINE_string("workdir", None, "A run to export to a temporary directory and use.")
    options_lib.define_flags(serving_modules, "PREDICT_OPTIONS")


def predictor_from_flags(scratch: str, get_task: TaskLookup) -> inference.Predictor:
    """The `--model` directory, or `--workdir` exported into `scratch` first."""
    if bool(FLAGS.model) == bool(FLAGS.workdir):
        raise app.UsageError("Pass exactly one of --model=DIR and --workdir=RUN.")
    directory = FLAGS.model
    if FLAGS.workdir:
        directory = f"{scratch}/model"
        export.export_run(FLAGS.workdir, directory, get_task=get_task)
    return inference.Predictor(directory, options_lib.values(), get_task=get_task)


def predict_sources(predictor: inference.Predictor, sources: list[str], output) -> int:
    """Writes a JSON line per input of `sources`, in order; returns the number of bad inputs."""
    items = [item for source in sources for item in predictor.codec.read(source)]
    good = [example for _, example in items if not isinstance(example, Exception)]
    results = iter(predictor.predict(good))
    failures = 0
    for where, example in items:
        if isinstance(example, Exception):
            failures += 1
            print(f"Error: {example}", file=sys.stderr)
            output.write(inference.to_json({"input": where, "error": str(example)}) + "\n")
        else:
            output.write(inference.to_json(next(results)) + "\n")
    output.flush()
    return failures


def main(argv: list[str], *, get_task: TaskLookup) -> None:
    """The predict command, after `define_flags`; `get_task` is `experiments.get_task`."""
    sources = argv[1:] or ["-"]
    if not FLAGS["verbosity"].present:  # --verbosity=0 shows the libraries' INFO lines
        export.quiet_logs()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            predictor = predictor_from_flags(scratch, get_task)
            failures = predict_sources(predictor, sources, sys.stdout)
    except UserError as error:
        raise SystemExit(f"Error: {error}") from None
    if failures:
        raise SystemExit(1)
