"""Language-model export and codec: prompts -> sampled continuations, generation inside the export.

The exported `generate` takes a batch of prompts of any lengths up to `max_prompt_length`
with each row's seed and sampling settings, and runs `generation.generate_rows` with the
model's cache; the codec turns text into prompt ids and continuations back into text.
"""

import math
import os

import numpy as np

from experiments.language_modeling import generation, tokenizers
from experiments.language_modeling import task as lm_task
from experiments.language_modeling.models import transformer
from research.core import data
from research.core.text import PAD_ID, UNK_ID
from research.deploy import inference
from research.deploy.export import ExportError, ExportSpec, Function
from research.deploy.inference import InputError
from research.deploy.options import Option

FUNCTION = "generate"
SETTINGS = ("temperature", "top_k", "top_p", "seed")
SETTING_TYPES = {
    "temperature": np.float32,
    "top_k": np.int32,
    "top_p": np.float32,
    "seed": np.int32,
}
EXPORT_OPTIONS = {
    "max_prompt_length": Option(int, "Language modeling: longest prompt (tokens)."),
    "max_new_tokens": Option(int, "Language modeling: tokens generated."),
}
PREDICT_OPTIONS = {
    "top_k": Option(
        int,
        "Language modeling: sample among the k most probable tokens (0: all; default the "
        "run's config.samples).",
    ),
    "temperature": Option(float, "Language modeling: 0 is greedy (default config's)."),
    "top_p": Option(float, "Language modeling: nucleus sampling (default config's)."),
    "seed": Option(int, "Language modeling: the sampling seed (default 0)."),
    "max_new_tokens": Option(int, "Language modeling: at most the exported number."),
}


def export_spec(config, model, dataset: data.Dataset, artifacts_dir: str, options) -> ExportSpec:
    """`generate`: `prompt [batch, max_prompt_length]` int32 (BOS first, PAD after),
    `prompt_length`, `temperature`, `top_k`, `top_p` and `seed` (`[batch]` each) ->
    `tokens [batch, max_new_tokens]`.

    `options` may set `max_prompt_length` (default half the training sequence length) and
    `max_new_tokens` (default the config's `samples.max_new_tokens`, or fewer so that both fit
    a Transformer's learned positions).
    """
    unknown = set(options) - set(EXPORT_OPTIONS)
    if unknown:
        raise InputError(
            f"Language-model exports take only max_prompt_length and max_new_tokens, not {unknown}."
        )
    max_prompt_length = int(options.get("max_prompt_length") or config.sequence_length // 2)
    max_new_tokens = int(options.get("max_new_tokens") or config.samples.max_new_tokens)
    learned = isinstance(model, transformer.TransformerLM) and model.positions == "learned"
    if learned and "max_new_tokens" not in options:  # the default fits the learned positions
        max_new_tokens = min(max_new_tokens, model.max_length - max_prompt_length)
    if min(max_prompt_length, max_new_tokens) < 1:
        raise ExportError("--max_prompt_length and --max_new_tokens must both be at least 1.")
    if learned and max_prompt_length + max_new_tokens > model.max_length:
        raise ExportError(
            f"--max_prompt_length={max_prompt_length} plus --max_new_tokens={max_new_tokens} "
            f"exceed the model's {model.max_length} learned positions; lower one of them."
        )

    def generate(variables, prompt, prompt_length, temperature, top_k, top_p, seed):
        tokens = generation.generate_rows(
            model, variables["params"], prompt, prompt_length, seed, temperature, top_k, top_p,
            max_new_tokens=max_new_tokens,
        )  # fmt: skip
        return {"tokens": tokens}

    inputs = [("prompt", "int32", (max_prompt_length,)), ("prompt_length", "int32", ())]
    inputs += [(name, np.dtype(SETTING_TYPES[name]).name, ()) for name in SETTINGS]
    folder = os.path.join(artifacts_dir, lm_task.TOKENIZER_DIR)
    assets = {}
    for file_name in os.listdir(folder):
        with open(os.path.join(folder, file_name), "rb") as file:
            assets[f"{lm_task.TOKENIZER_DIR}/{file_name}"] = file.read()

    def eval_inputs(arrays):
        """Greedy continuations of the first `max_prompt_length` tokens of each window."""
        prompts = arrays["inputs"][:, :max_prompt_length]
        count = len(prompts)
        lengths = np.maximum(np.sum(prompts != PAD_ID, axis=1), 1).astype(np.int32)
        settings = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0}
        return {
            "prompt": prompts.astype(np.int32),
            "prompt_length": lengths,
            **{k: np.full((count,), v, SETTING_TYPES[k]) for k, v in settings.items()},
        }

    samples = config.samples
    return ExportSpec(
        functions={FUNCTION: Function(generate, inputs)},
        default_function=FUNCTION,
        assets=assets,
        metadata={
            "max_prompt_length": max_prompt_length,
            "max_new_tokens": max_new_tokens,
            "defaults": {
                "temperature": samples.temperature,
                "top_k": samples.top_k,
                "top_p": samples.top_p,
                "seed": 0,
            },
        },
        eval_inputs=eval_inputs,
    )


def _settings(values: dict, where: str) -> dict:
    """Sampling settings checked (one sentence naming the bad one), as the export's dtypes."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            raise InputError(f"{where}{name} must be a number, not {value!r}")
        whole = math.isfinite(value) and int(value) == value
        if SETTING_TYPES[name] is np.int32 and not whole:
            raise InputError(f"{where}{name} must be a whole number, not {value!r}")
    try:
        generation.check_sampling(*(values[name] for name in SETTINGS), prefix=where)
    except generation.SamplingError as error:
        raise InputError(str(error)) from None
    return {name: SETTING_TYPES[name](value) for name, value in values.items()}


class Codec:
    """A JSON instance is a prompt, or `{"prompt": ..., "temperature": ..., "top_k": ...,
    "top_p": ..., "seed": ...}`; the answer its continuation as text and token ids.

    Options (predict's and serve's flags) change the defaults: temperature, top_k, top_p,
    seed (the export's defaults are the run's `config.samples`, seed 0: the same prompt and
    seed give the same continuation) and max_new_tokens (at most the exported number). Where a
    prompt has tokens unknown to the tokenizer, the answer counts them (`unknown_prompt_tokens`);
    a prompt longer than the export takes is refused, never cut.
    """

    def __init__(self, model, options: dict):
        unknown = set(options) - set(PREDICT_OPTIONS)
        if unknown:
            raise InputError(f"Language models take the options {SETTINGS}, not {unknown}.")
        metadata = model.signature["metadata"]
        self.function = FUNCTION
        self.max_prompt_length = metadata["max_prompt_length"]
        exported = metadata["max_new_tokens"]
        self.max_new_tokens = int(options.get("max_new_tokens") or exported)
        if not 1 <= self.max_new_tokens <= exported:
            raise InputError(
                f"--max_new_tokens={self.max_new_tokens} must be between 1 and the exported "
                f"{exported}; export again with --max_new_tokens for more."
            )
        given = {name: options[name] for name in SETTINGS if options.get(name) is not None}
        try:
            self.defaults = _settings({**metadata["defaults"], **given}, "--")
        except InputError as error:  # a flag of predict or serve: a whole sentence
            raise InputError(f"{error}.") from None
        self.tokenizer = tokenizers.load_tokenizer(model.asset_path(lm_task.TOKENIZER_DIR))

    def parse(self, instance) -> dict[str, np.ndarray]:
        settings = {}
        if isinstance(instance, dict):
            unknown = set(instance) - {"prompt", *SETTINGS}
            if unknown or "prompt" not in instance:
                raise InputError(
                    'expected a prompt string or {"prompt": ...} with any of '
                    f"{', '.join(SETTINGS)}, got the keys {sorted(instance)}"
                )
            settings = {name: instance[name] for name in SETTINGS if name in instance}
            instance = instance["prompt"]
        if not isinstance(instance, str):
            raise InputError(f"expected a prompt as a string, got a {type(instance).__name__}")
        ids = lm_task.prompt_ids(self.tokenizer, instance)
        if len(ids) > self.max_prompt_length:
            raise InputError(
                f"the prompt makes {len(ids)} tokens (BOS included) but this export takes at "
                f"most {self.max_prompt_length}; shorten it or export with a larger "
                "--max_prompt_length"
            )
        unknown = ids.count(UNK_ID)
        prompt = np.full((self.max_prompt_length,), PAD_ID, np.int32)
        prompt[: len(ids)] = ids
        return {
            "prompt": prompt,
            "prompt_length": np.int32(len(ids)),
            **_settings({**self.defaults, **settings}, ""),
            inference.NOTES: {"unknown_prompt_tokens": unknown} if unknown else {},
        }

    def read(self, source: str):
        """(where, example or InputError) for every line of `source` ("-" = stdin): a prompt
        per line."""
        for where, text in inference.text_lines(source):
            yield (
                where,
                text
                if isinstance(text, InputError)
                else inference.parse_line(self.parse, where, text),
            )

    def format(self, outputs: dict[str, np.ndarray]) -> dict:
        tokens = outputs["tokens"][: self.max_new_tokens].tolist()
        return {"continuation": tokenizers.decode_text(self.tokenizer, tokens), "tokens": tokens}
