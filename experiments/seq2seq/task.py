"""Translation-style sequence to sequence: SCAN, a folder of parallel text, or WMT via tfds.

Training is teacher-forced cross-entropy over target tokens. Every evaluation also decodes
every example (greedy or beam search) and scores the detokenized output: exact match and
corpus BLEU by sacreBLEU, with a few example translations written to the workdir.
"""

import dataclasses
import functools
import importlib
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments.seq2seq import corpora, decoding, metrics, scan, tokenizers
from experiments.seq2seq.models import lstm, transformer
from research.core import data, precision
from research.core.config import ConfigError
from research.core.task import Task, model_from_config
from research.core.text import EOS_ID, PAD_ID, SentencePieceTokenizer, sentencepiece_from_config


@dataclasses.dataclass(frozen=True)
class References:
    """What scoring decoded predictions needs: the detokenizer and the texts of each split."""

    target_tokenizer: tokenizers.WordTokenizer | SentencePieceTokenizer
    pairs: dict[str, list[tuple[str, str]]]  # split -> (source, reference) in split order


MODELS = {"transformer": transformer.Transformer, "lstm": lstm.LSTMSeq2Seq}
NUM_EXAMPLES_SHOWN = 5


def _read_pairs(config: ml_collections.ConfigDict) -> dict[str, list[tuple[str, str]]]:
    """Text pairs per split: "train" plus the evaluated splits."""
    try:
        return _read_corpus(config)
    except FileNotFoundError as error:
        raise data.DatasetMissingError(str(error)) from error
    except ValueError as error:
        if isinstance(error, ConfigError):
            raise
        raise data.MalformedDataError(str(error)) from error


def _read_corpus(config: ml_collections.ConfigDict) -> dict[str, list[tuple[str, str]]]:
    if config.dataset == "scan":
        if config.scan_split not in scan.SPLITS:
            raise ConfigError(
                f"config.scan_split '{config.scan_split}' is unknown; "
                f"choose one of {', '.join(scan.SPLITS)}."
            )
        return scan.load_split(config.scan_split)
    if config.dataset == "folder":
        folder = os.path.expanduser(config.data_dir)
        return corpora.read_parallel_folder(folder, config.source_language, config.target_language)
    if config.dataset.startswith("wmt"):
        return corpora.read_wmt(
            config.dataset, config.data_dir, config.source_language, config.target_language
        )
    raise ConfigError(
        f"config.dataset '{config.dataset}' is not a seq2seq dataset; "
        "choose scan, folder, wmt14_translate/de-en or wmt17_translate/de-en."
    )


def _tokenizers(config, pairs, artifacts_dir):
    """(source, target) tokenizers: loaded from the run's artifacts, else built and stored."""
    source_dir = os.path.join(artifacts_dir, "source_tokenizer")
    target_dir = os.path.join(artifacts_dir, "target_tokenizer")
    if os.path.isdir(source_dir) and os.path.isdir(target_dir):
        return tokenizers.load_tokenizer(source_dir), tokenizers.load_tokenizer(target_dir)
    settings = config.tokenizer
    if settings.type == "word":
        source = tokenizers.WordTokenizer.from_texts(s for s, _ in pairs)
        target = tokenizers.WordTokenizer.from_texts(t for _, t in pairs)
    elif settings.type == "sentencepiece":
        texts = tokenizers.training_texts(pairs, side="both")
        source = target = sentencepiece_from_config(texts, settings)
    else:
        raise ConfigError(
            f"config.tokenizer.type '{settings.type}' is unknown; choose word or sentencepiece."
        )
    source.save(source_dir)
    target.save(target_dir)
    return source, target


def _encode(texts, tokenizer, max_length: int) -> np.ndarray:
    """Token ids with EOS, truncated to `max_length` and padded: `[len(texts), max_length]`."""
    ids = np.full((len(texts), max_length), PAD_ID, np.int32)
    for row, text in enumerate(texts):
        row_ids = tokenizer.encode(text)[: max_length - 1] + [EOS_ID]
        ids[row, : len(row_ids)] = row_ids
    return ids


def load_data(config: ml_collections.ConfigDict, artifacts_dir: str) -> data.Dataset:
    """Token arrays `inputs [examples, max_input_length]`, `targets [examples, max_target_length]`.

    The evaluation context (`References`) keeps what scoring needs: the target tokenizer and
    each evaluated split's text pairs.
    """
    pairs = _read_pairs(config)
    source_tokenizer, target_tokenizer = _tokenizers(config, pairs["train"], artifacts_dir)
    eval_names = [name for name in pairs if name != "train"]
    if config.get("eval_splits"):
        missing = [name for name in config.eval_splits if name not in eval_names]
        if missing:
            raise data.DatasetMissingError(
                f"config.eval_splits asks for {', '.join(missing)} but the data has only "
                f"{', '.join(eval_names) or 'a train split'} (a folder's val files are 'valid'); "
                "add the files or set --config.eval_splits to the splits there."
            )
        eval_names = list(config.eval_splits)

    def arrays(split_pairs):
        sources, references = zip(*split_pairs, strict=True)
        return {
            "inputs": _encode(sources, source_tokenizer, config.max_input_length),
            "targets": _encode(references, target_tokenizer, config.max_target_length),
        }

    return data.Dataset(
        train=arrays(pairs["train"]),
        eval_splits={name: arrays(pairs[name]) for name in eval_names},
        info={
            "input_vocab_size": source_tokenizer.vocab_size,
            "target_vocab_size": target_tokenizer.vocab_size,
        },
        evaluation_context=References(target_tokenizer, {name: pairs[name] for name in eval_names}),
    )


def create_model(config: ml_collections.ConfigDict, info: dict):
    """`config.model.name` picks the model; the other `config.model` keys are its fields."""
    sizes = (info["input_vocab_size"], info["target_vocab_size"])
    if config.model.get("share_embeddings") and sizes[0] != sizes[1]:
        raise ConfigError(
            "config.model.share_embeddings needs one vocabulary for both languages but the "
            f"tokenizers have {sizes[0]} and {sizes[1]} ids; set "
            "--config.model.share_embeddings=False or --config.tokenizer.type=sentencepiece."
        )
    return model_from_config(
        MODELS,
        config.model,
        input_vocab_size=info["input_vocab_size"],
        target_vocab_size=info["target_vocab_size"],
        **precision.model_dtypes(config),
    )


def model_inputs(batch):
    return batch["inputs"], batch["targets"]


def loss(logits, batch, *, label_smoothing: float):
    """Summed token loss and number of target tokens per example."""
    targets = batch["targets"]
    weights = (targets != PAD_ID).astype(jnp.float32)
    labels = optax.smooth_labels(jax.nn.one_hot(targets, logits.shape[-1]), label_smoothing)
    losses = optax.softmax_cross_entropy(logits, labels) * weights
    return losses.sum(axis=1), weights.sum(axis=1)


def metric_sums(logits, batch):
    targets = batch["targets"]
    weights = (targets != PAD_ID).astype(jnp.float32)
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, targets) * weights
    correct = (logits.argmax(-1) == targets) * weights
    return {
        "cross_entropy": cross_entropy.sum(axis=1),
        "correct_tokens": correct.sum(axis=1),
        "tokens": weights.sum(axis=1),
    }


def summarize(sums: dict[str, float]) -> dict[str, float]:
    return {
        "loss": sums["cross_entropy"] / sums["tokens"],
        "token_accuracy": sums["correct_tokens"] / sums["tokens"],
    }


def predict(model, variables, batch, *, max_length: int, beam_size: int, length_penalty: float):
    """Decoded target ids `[batch, max_length]`."""
    tokens, _ = decoding.decode(
        model,
        variables,
        batch["inputs"],
        max_length=max_length,
        beam_size=beam_size,
        length_penalty=length_penalty,
    )
    return tokens


def score_predictions(
    split: str, predictions: np.ndarray, references: "References", *, bleu_tokenizer: str
):
    """Exact match and sacreBLEU over the detokenized hypotheses of a whole split."""
    tokenizer = references.target_tokenizer
    split_pairs = references.pairs[split]
    hypotheses = [tokenizer.decode(row.tolist()) for row in predictions]
    references = [target for _, target in split_pairs]
    bleu, signature = metrics.corpus_bleu(hypotheses, references, tokenize=bleu_tokenizer)
    bleu_lowercase, signature_lowercase = metrics.corpus_bleu(
        hypotheses, references, lowercase=True, tokenize=bleu_tokenizer
    )
    examples = [
        {"source": source, "reference": reference, "hypothesis": hypothesis}
        for (source, reference), hypothesis in zip(
            split_pairs[:NUM_EXAMPLES_SHOWN], hypotheses, strict=False
        )
    ]
    scores = {
        "exact_match": metrics.exact_match(hypotheses, references),
        "bleu": bleu,
        "bleu_lowercase": bleu_lowercase,
    }
    details = {
        "sacrebleu_signature": signature,
        "sacrebleu_signature_lowercase": signature_lowercase,
        "examples": examples,
    }
    return scores, details


def get_task(config: ml_collections.ConfigDict) -> Task:
    decode_settings = config.decode
    return Task(
        load_data=functools.partial(load_data, config),
        create_model=functools.partial(create_model, config),
        model_inputs=model_inputs,
        loss=functools.partial(loss, label_smoothing=config.label_smoothing),
        metric_sums=metric_sums,
        summarize=summarize,
        predict=functools.partial(
            predict,
            max_length=decode_settings.max_length,
            beam_size=decode_settings.beam_size,
            length_penalty=decode_settings.length_penalty,
        ),
        score_predictions=functools.partial(
            score_predictions,
            bleu_tokenizer=metrics.bleu_tokenizer_for(
                config.target_language, config.get("bleu_tokenizer", "")
            ),
        ),
        sequence_keys=("inputs", "targets"),
        serving=lambda: importlib.import_module("experiments.seq2seq.serving"),
    )
