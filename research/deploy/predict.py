"""Predicts from the command line with an exported model: inputs in, JSON lines out.

`python -m research.deploy.predict --model=DIR [FILE ...]` (stdin without files) writes one JSON
object per input, in order; an input that cannot be used gets `{"input": ..., "error": ...}`.
"""

import sys
import tempfile

from absl import app, flags

from research.deploy import export, inference
from research.errors import UserError

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The flags predict and serve share: which model, and the task options."""
    flags.DEFINE_string("model", None, "An exported directory (python -m research.deploy.export).")
    flags.DEFINE_string("workdir", None, "A run to export to a temporary directory and use.")
    flags.DEFINE_integer(
        "top_k",
        None,
        "Image classification: probabilities shown (default 3). Language modeling: sample "
        "among the k most probable tokens (0: all; default the run's config.samples).",
    )
    flags.DEFINE_integer("beam_size", None, "Seq2seq: an exported beam size (default config's).")
    flags.DEFINE_float("length_penalty", None, "Seq2seq: GNMT alpha (default the config's).")
    flags.DEFINE_float("temperature", None, "Language modeling: 0 is greedy (default config's).")
    flags.DEFINE_float("top_p", None, "Language modeling: nucleus sampling (default config's).")
    flags.DEFINE_integer("seed", None, "Language modeling: the sampling seed (default 0).")
    flags.DEFINE_integer("max_new_tokens", None, "Language modeling: at most the exported number.")


def options_from_flags() -> dict:
    names = ("top_k", "beam_size", "length_penalty", "temperature", "top_p", "seed")
    names += ("max_new_tokens",)
    return {name: FLAGS[name].value for name in names if FLAGS[name].value is not None}


def predictor_from_flags(scratch: str) -> inference.Predictor:
    """The `--model` directory, or `--workdir` exported into `scratch` first."""
    if bool(FLAGS.model) == bool(FLAGS.workdir):
        raise app.UsageError("Pass exactly one of --model=DIR and --workdir=RUN.")
    directory = FLAGS.model
    if FLAGS.workdir:
        directory = f"{scratch}/model"
        export.export_run(FLAGS.workdir, directory)
    return inference.Predictor(directory, options_from_flags())


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


def main(argv) -> None:
    sources = argv[1:] or ["-"]
    if not FLAGS["verbosity"].present:  # --verbosity=0 shows the libraries' INFO lines
        export.quiet_logs()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            predictor = predictor_from_flags(scratch)
            failures = predict_sources(predictor, sources, sys.stdout)
    except UserError as error:
        raise SystemExit(f"Error: {error}") from None
    if failures:
        raise SystemExit(1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
