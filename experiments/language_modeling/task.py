"""Language modeling of a folder of plain text with an LSTM or a decoder-only Transformer.

Each split is one token stream (every line ends with EOS, the stream starts with BOS) cut into
windows of `sequence_length` predicted tokens, so every token of a split is predicted exactly
once (`eval_stride` overlaps the evaluated windows to give each token more context). Metrics:
cross-entropy per token, perplexity and bits per UTF-8 byte of the split's text.
"""

import dataclasses
import functools
import importlib
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments.language_modeling import corpora, generation, ngram, tokenizers
from experiments.language_modeling.models import lstm, transformer
from research.core import data, precision
from research.core.config import ConfigError
from research.core.task import Task, model_from_config
from research.core.text import BOS_ID, EOS_ID, PAD_ID, sentencepiece_from_config

MODELS = {"transformer": transformer.TransformerLM, "lstm": lstm.LSTMLM}
TOKENIZER_DIR = "tokenizer"


@dataclasses.dataclass(frozen=True)
class Corpus:
    """What the reference model and the samples need: the tokenizer and each split's lines."""

    tokenizer: tokenizers.Tokenizer
    lines: dict[str, list[str]]  # "train" and every evaluated split


def _read_lines(config: ml_collections.ConfigDict) -> dict[str, list[str]]:
    splits = ("train", *config.eval_splits)
    try:
        lines = corpora.read_text_folder(config.data_dir, splits)
    except FileNotFoundError as error:
        raise data.DatasetMissingError(str(error)) from None
    except ValueError as error:
        raise data.MalformedDataError(str(error)) from None
    if config.max_train_bytes:
        kept, total = [], 0
        for line in lines["train"]:
            if total >= config.max_train_bytes:
                break
            kept.append(line)
            total += len(line.encode("utf-8")) + 1
        lines["train"] = kept
    return lines


def _tokenizer(config, train_lines: list[str], artifacts_dir: str) -> tokenizers.Tokenizer:
    """Loaded from the run's artifacts (a resumed run) or `tokenizer.path`, else learned."""
    directory = os.path.join(artifacts_dir, TOKENIZER_DIR)
    settings = config.tokenizer
    if os.path.isdir(directory):
        return tokenizers.load_tokenizer(directory)
    if settings.path:
        try:
            tokenizer = tokenizers.load_tokenizer(settings.path)
        except FileNotFoundError as error:
            raise ConfigError(f"config.tokenizer.path: {error}") from None
    elif settings.type == "characters":
        tokenizer = tokenizers.CharacterTokenizer.from_lines(train_lines)
    elif settings.type == "bytes":
        tokenizer = tokenizers.ByteTokenizer()
    elif settings.type == "sentencepiece":
        tokenizer = sentencepiece_from_config([line for line in train_lines if line], settings)
    else:
        raise ConfigError(
            f"config.tokenizer.type '{settings.type}' is unknown; choose characters, bytes or "
            "sentencepiece."
        )
    tokenizer.save(directory)
    return tokenizer


def windows(tokenizer, lines: list[str], length: int, stride: int = 0) -> data.Arrays:
    """`inputs`, `targets` `[windows, length]` over the split's stream, and per window the
    `bytes` of text its targets complete (a line's bytes and newline count at its EOS).

    `stride` 0 (or `length`) puts the windows side by side. A smaller stride starts a window
    every `stride` tokens and scores only its last `stride` targets (the others are PAD), so
    every token after the first window is still predicted exactly once, with at least
    `length - stride` tokens of context.
    """
    stride = stride or length
    assert 0 < stride <= length, (stride, length)
    stream = np.array([BOS_ID, *tokenizers.encode_text(tokenizer, lines)], np.int32)
    byte_weights = np.zeros(len(stream), np.float64)
    ends = np.flatnonzero(stream == EOS_ID)
    assert len(ends) == len(lines), "a tokenizer produced EOS inside a line"
    byte_weights[ends] = [len(line.encode("utf-8")) + 1 for line in lines]
    rows = 1 + max(0, math.ceil((len(stream) - 1 - length) / stride))
    padding = (rows - 1) * stride + length + 1 - len(stream)
    stream = np.pad(stream, (0, padding), constant_values=PAD_ID)
    byte_weights = np.pad(byte_weights, (0, padding))
    positions = stride * np.arange(rows)[:, None] + np.arange(length)  # of each input
    targets, byte_weights = stream[positions + 1], byte_weights[positions + 1]
    targets[1:, : length - stride] = PAD_ID  # scored by an earlier window
    byte_weights[1:, : length - stride] = 0.0
    return {
        "inputs": stream[positions],
        "targets": targets,
        "bytes": byte_weights.sum(axis=1).astype(np.float32),
    }


def load_data(config: ml_collections.ConfigDict, artifacts_dir: str) -> data.Dataset:
    """Windows of every split; the tokenizer is stored in `artifacts_dir/tokenizer`."""
    length, stride = config.sequence_length, config.get("eval_stride", 0)
    if not 0 <= stride <= length:
        raise ConfigError(
            f"config.eval_stride={stride} is outside 0 to config.sequence_length={length}; set "
            "--config.eval_stride to 0 (windows side by side) or a smaller positive stride."
        )
    lines = _read_lines(config)
    tokenizer = _tokenizer(config, lines["train"], artifacts_dir)
    return data.Dataset(
        train=windows(tokenizer, lines["train"], length),
        eval_splits={
            name: windows(tokenizer, lines[name], length, stride) for name in config.eval_splits
        },
        info={"vocab_size": tokenizer.vocab_size},
        evaluation_context=Corpus(tokenizer, lines),
    )


def create_model(config: ml_collections.ConfigDict, info: dict):
    """`config.model.name` picks the model; the other `config.model` keys are its fields."""
    model = config.model
    learned = model.name == "transformer" and model.positions == "learned"
    if learned and model.max_length < config.sequence_length:
        raise ConfigError(
            f"config.model.max_length={model.max_length} is shorter than "
            f"config.sequence_length={config.sequence_length}; raise "
            "--config.model.max_length to at least the sequence length."
        )
    return model_from_config(
        MODELS, config.model, vocab_size=info["vocab_size"], **precision.model_dtypes(config)
    )


def model_inputs(batch):
    return (batch["inputs"],)


def loss(logits, batch):
    """Summed token cross-entropy and number of predicted tokens per window."""
    targets = batch["targets"]
    weights = (targets != PAD_ID).astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets) * weights
    return losses.sum(axis=1), weights.sum(axis=1)


def metric_sums(logits, batch):
    cross_entropy, tokens = loss(logits, batch)
    return {"cross_entropy": cross_entropy, "tokens": tokens, "bytes": batch["bytes"]}


def summarize(sums: dict[str, float]) -> dict[str, float]:
    loss_per_token = sums["cross_entropy"] / sums["tokens"]
    return {
        "loss": loss_per_token,
        "perplexity": math.exp(min(loss_per_token, 700.0)),
        "bits_per_byte": sums["cross_entropy"] / math.log(2) / max(sums["bytes"], 1.0),
    }


def reference_metrics(dataset: data.Dataset, *, order: int) -> dict[str, dict[str, float]]:
    """Bits per byte of an interpolated Kneser-Ney character n-gram fit on the train split."""
    if not order:
        return {}
    corpus = dataset.evaluation_context
    try:
        model = ngram.fit("".join(line + "\n" for line in corpus.lines["train"]), order)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return {
        split: {f"ngram{order}_bits_per_byte": ngram.bits_per_byte(model, corpus.lines[split])}
        for split in dataset.eval_splits
    }


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """BOS and the prompt's tokens; newlines in the prompt become EOS."""
    *complete, last = prompt.split("\n")
    return [BOS_ID, *tokenizers.encode_text(tokenizer, complete), *tokenizer.encode(last)]


def sample(model, params, tokenizer, prompt: str, *, num_samples: int, max_new_tokens: int,
           sampling: generation.Sampling, seed: int) -> list[str]:  # fmt: skip
    """`num_samples` continuations of `prompt` as text, a pure function of `seed`."""
    ids = prompt_ids(tokenizer, prompt)
    generation.check_length(model, len(ids) + max_new_tokens)
    prompts = jnp.asarray([ids] * num_samples, jnp.int32)
    tokens = generation.generate(
        model, params, prompts, jax.random.PRNGKey(seed), max_new_tokens=max_new_tokens,
        sampling=sampling,
    )  # fmt: skip
    return [tokenizers.decode_text(tokenizer, row) for row in np.asarray(tokens)]


def samples(model, variables, corpus: Corpus, *, settings, seed: int) -> list[dict]:
    """A few continuations of each of `settings.prompts`, written at every evaluation."""
    results = []
    for number, prompt in enumerate(settings.prompts):
        ids = prompt_ids(corpus.tokenizer, prompt)
        max_new_tokens = settings.max_new_tokens
        if isinstance(model, transformer.TransformerLM) and model.positions == "learned":
            max_new_tokens = min(max_new_tokens, model.max_length - len(ids))
        if max_new_tokens <= 0:
            continue
        texts = sample(
            model, variables["params"], corpus.tokenizer, prompt,
            num_samples=settings.num_samples, max_new_tokens=max_new_tokens,
            sampling=generation.Sampling(settings.temperature, settings.top_k, settings.top_p),
            seed=seed + number,
        )  # fmt: skip
        results.extend({"prompt": prompt, "sample": text} for text in texts)
    return results


def get_task(config: ml_collections.ConfigDict) -> Task:
    return Task(
        load_data=functools.partial(load_data, config),
        create_model=functools.partial(create_model, config),
        model_inputs=model_inputs,
        loss=loss,
        metric_sums=metric_sums,
        summarize=summarize,
        reference_metrics=functools.partial(reference_metrics, order=config.reference_ngram_order),
        samples=functools.partial(samples, settings=config.samples, seed=config.seed)
        if config.samples.num_samples
        else None,
        sequence_keys=("inputs", "targets"),
        serving=lambda: importlib.import_module("experiments.language_modeling.serving"),
    )
