"""Seq2seq export and codec: source sentences -> translations, decoding inside the export.

Each exported function `beam<k>` runs the whole greedy (k = 1) or beam search of
`decoding.decode`; the length penalty is an input, so it can change without re-exporting.
"""

import os

import numpy as np

from experiments.seq2seq import decoding, tokenizers
from experiments.seq2seq import task as seq2seq_task
from research.core import data
from research.core.text import EOS_ID, UNK_ID
from research.deploy import inference
from research.deploy.export import ExportSpec, Function
from research.deploy.inference import InputError
from research.deploy.options import Option

TOKENIZERS = ("source_tokenizer", "target_tokenizer")
EXPORT_OPTIONS = {
    "beam_sizes": Option(list, "Seq2seq: beam sizes to export (default 1, config's)."),
}
PREDICT_OPTIONS = {
    "beam_size": Option(int, "Seq2seq: an exported beam size (default config's)."),
    "length_penalty": Option(float, "Seq2seq: GNMT alpha (default the config's)."),
}


def _function_name(beam_size: int) -> str:
    return f"beam{beam_size}"


def export_spec(config, model, dataset: data.Dataset, artifacts_dir: str, options) -> ExportSpec:
    """`beam<k>`: `inputs [batch, max_input_length]` int32 and `length_penalty [batch]` ->
    `tokens [batch, decode.max_length]` (EOS included, PAD after), `log_probability [batch]`.

    Exports greedy and the config's beam size unless `options["beam_sizes"]` lists others
    (whole numbers, or their text as `--beam_sizes=1,4` gives them).
    """
    unknown = set(options) - set(EXPORT_OPTIONS)
    if unknown:
        raise InputError(f"Seq2seq exports take only the option beam_sizes, not {unknown}.")
    settings = config.decode
    sizes = options.get("beam_sizes") or (1, settings.beam_size)
    try:
        beam_sizes = sorted({int(size) for size in sizes})
    except ValueError:
        raise InputError(
            f"--beam_sizes={','.join(map(str, sizes))} must be whole numbers, such as "
            "--beam_sizes=1,4."
        ) from None
    if min(beam_sizes) < 1:
        raise InputError(f"--beam_sizes={','.join(map(str, sizes))} must all be at least 1.")

    def decoder(beam_size):
        def decode(variables, inputs, length_penalty):
            tokens, log_probability = decoding.decode(
                model,
                variables,
                inputs,
                max_length=settings.max_length,
                beam_size=beam_size,
                length_penalty=length_penalty[:, None, None],  # per example
            )
            return {"tokens": tokens, "log_probability": log_probability}

        return decode

    inputs = [("inputs", "int32", (config.max_input_length,)), ("length_penalty", "float32", ())]
    assets = {}
    for name in TOKENIZERS:
        folder = os.path.join(artifacts_dir, name)
        for file_name in os.listdir(folder):
            with open(os.path.join(folder, file_name), "rb") as file:
                assets[f"{name}/{file_name}"] = file.read()

    def eval_inputs(arrays):
        count = len(arrays["inputs"])
        penalty = np.full((count,), settings.length_penalty, np.float32)
        return {"inputs": arrays["inputs"], "length_penalty": penalty}

    return ExportSpec(
        functions={_function_name(k): Function(decoder(k), inputs) for k in beam_sizes},
        default_function=_function_name(settings.beam_size),
        assets=assets,
        metadata={
            "max_input_length": config.max_input_length,
            "length_penalty": settings.length_penalty,
            "beam_sizes": beam_sizes,
        },
        eval_inputs=eval_inputs,
    )


class Codec:
    """A JSON instance is a source sentence; the answer its translation and token ids, and,
    where any were, how many source tokens were cut (beyond `max_input_length`,
    `source_tokens_cut`) or unknown to the tokenizer (`unknown_source_tokens`)."""

    def __init__(self, model, options: dict):
        unknown = set(options) - set(PREDICT_OPTIONS)
        if unknown:
            raise InputError(
                f"Seq2seq models take the options beam_size and length_penalty, not {unknown}."
            )
        signature = model.signature
        metadata = signature["metadata"]
        self.function = signature["default_function"]
        if options.get("beam_size") is not None:
            self.function = _function_name(int(options["beam_size"]))
            if self.function not in signature["functions"]:
                raise InputError(
                    f"--beam_size={options['beam_size']} was not exported; choose one of "
                    f"{metadata['beam_sizes']} or export with --beam_sizes including it."
                )
        penalty = options.get("length_penalty")
        self.length_penalty = np.float32(
            metadata["length_penalty"] if penalty is None else float(penalty)
        )
        self.max_input_length = metadata["max_input_length"]
        self.source, self.target = (
            tokenizers.load_tokenizer(model.asset_path(name)) for name in TOKENIZERS
        )

    def parse(self, instance) -> dict[str, np.ndarray]:
        if not isinstance(instance, str):
            kind = type(instance).__name__
            raise InputError(f"expected a source sentence as a string, got a {kind}")
        # The trainer's own encoding: truncated to max_input_length with EOS, padded with 0;
        # the answer says how many tokens were cut and how many were unknown (UNK).
        ids = seq2seq_task._encode([instance], self.source, self.max_input_length)[0]
        tokens = self.source.encode(instance)
        notes = {
            "source_tokens_cut": max(0, len(tokens) - (self.max_input_length - 1)),
            "unknown_source_tokens": tokens.count(UNK_ID),
        }
        notes = {name: count for name, count in notes.items() if count}
        return {"inputs": ids, "length_penalty": self.length_penalty, inference.NOTES: notes}

    def read(self, source: str):
        """(where, example or InputError) for every line of `source` ("-" = stdin)."""
        for where, text in inference.text_lines(source):
            yield (
                where,
                text
                if isinstance(text, InputError)
                else inference.parse_line(self.parse, where, text),
            )

    def format(self, outputs: dict[str, np.ndarray]) -> dict:
        tokens = outputs["tokens"].tolist()
        return {
            "translation": self.target.decode(tokens),
            "tokens": tokens[: tokens.index(EOS_ID) + 1] if EOS_ID in tokens else tokens,
            "log_probability": float(outputs["log_probability"]),
        }
