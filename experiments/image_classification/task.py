"""Image classification: inputs -> one of `num_classes` labels, trained with cross-entropy.

Datasets: MNIST-1D (generated locally), and tfds's mnist, fashion_mnist and cifar10 when
prepared in `config.data_dir`, optionally restricted to some classes and examples per class.
Models: `config.model.name` is mlp, cnn or resnet. With `config.loss = "binary_cross_entropy"`
each example has several 0/1 labels (`multi_label.py`).
"""

import functools
import importlib
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments.image_classification import datasets
from experiments.image_classification.models import cnn, mlp, resnet
from research.core import data, input_pipeline, precision, streaming
from research.core.config import ConfigError
from research.core.splits import ArrayRecords
from research.core.task import Task, model_from_config

# dataset name -> (builder generating it locally or None, input feature, eval splits, classes)
DATASETS = {
    "mnist1d": (datasets.Mnist1d, "signal", ("test",), 10),
    "mnist": (None, "image", ("test",), 10),
    "fashion_mnist": (None, "image", ("test",), 10),
    "cifar10": (None, "image", ("test",), 10),
}
MODELS = {"mlp": mlp.MLP, "cnn": cnn.CNN, "resnet": resnet.ResNet}
LOSSES = ("cross_entropy", "binary_cross_entropy")


def _prepare(arrays: data.Arrays, *, input_key: str, mean, std, relabel) -> data.Arrays:
    """Raw rows -> {"inputs": float32 standardized `[rows, ..., channels]`, "label": int32,
    class `relabel[label]`}.

    Runs on whole splits (held in memory) or on each batch in Grain's workers: the same
    element-wise arithmetic, so both give the same bits.
    """
    inputs = arrays[input_key]
    if inputs.ndim == 2:  # a 1-D signal gets a channel axis: [rows, length, 1]
        inputs = inputs[..., None]
    inputs = ((inputs - mean) / std).astype(np.float32)
    return {"inputs": inputs, "label": relabel[arrays["label"]].astype(np.int32)}


def _statistics(read_inputs, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of the training inputs, in float64.

    `read_inputs(start, stop)` gives raw inputs `[rows, ...]`; both input paths read the same
    fixed chunks, so the sums (and the normalized inputs) are identical.
    """
    total = squares = values = 0.0
    whole_total = whole_squares = 0  # uint8 inputs: integer sums, exact
    for start in range(0, count, streaming.ROWS_PER_READ):
        inputs = read_inputs(start, min(start + streaming.ROWS_PER_READ, count))
        inputs = inputs[..., None] if inputs.ndim == 2 else inputs
        values += inputs.size // inputs.shape[-1]
        if inputs.dtype == np.uint8:
            # A uint8's square fits uint16; uint64 sums hold any split. Each channel is copied
            # contiguous first: sums over a strided view are several times slower.
            channels = [np.ascontiguousarray(c) for c in inputs.reshape(-1, inputs.shape[-1]).T]
            whole_total = whole_total + np.array([c.sum(dtype=np.uint64) for c in channels])
            wide = [c.astype(np.uint16) for c in channels]
            whole_squares = whole_squares + np.array(
                [np.multiply(w, w, out=w).sum(dtype=np.uint64) for w in wide]
            )
            continue
        inputs = inputs.astype(np.float64)
        axes = tuple(range(inputs.ndim - 1))
        total = total + inputs.sum(axis=axes)
        squares = squares + (inputs * inputs).sum(axis=axes)
    if not np.isscalar(whole_total):  # the float64 sums are exact for them too (below 2**53)
        total, squares = whole_total.astype(np.float64), whole_squares.astype(np.float64)
    mean = total / values
    return mean, np.sqrt(squares / values - mean * mean)


def _cached_statistics(artifacts_dir: str, description: str | None, compute) -> tuple:
    """`compute()`'s (mean, std); of a split read from files (`description` names them) kept
    in the run's artifacts, so that a resumed run does not read the whole split again."""
    path = os.path.join(artifacts_dir, "input_statistics.json") if artifacts_dir else ""
    if description is None:
        path = ""
    if path and os.path.exists(path):
        with open(path) as file:
            saved = json.load(file)
        if saved["data"] == description:
            return np.asarray(saved["mean"], np.float64), np.asarray(saved["std"], np.float64)
    mean, std = compute()
    if path:
        os.makedirs(artifacts_dir, exist_ok=True)
        record = {"data": description, "mean": mean.tolist(), "std": std.tolist()}
        with open(f"{path}.{os.getpid()}.tmp", "w") as file:
            json.dump(record, file)
        os.replace(f"{path}.{os.getpid()}.tmp", path)  # readers never see half a file
    return mean, std


def _builder(config, builder_class, random_access: bool):
    """The tfds builder of the dataset (embedded ones write ArrayRecord for `random_access`)."""
    import tensorflow_datasets as tfds

    data_dir = os.path.expanduser(config.data_dir)
    if builder_class is None:
        return tfds.builder(config.dataset, data_dir=data_dir)
    if not random_access:
        return builder_class(data_dir=data_dir)
    try:
        return builder_class(data_dir=data_dir, file_format="array_record")
    except ValueError as error:  # tfds: "File format is already set to FileFormat.TFRECORD"
        if "already set" not in str(error):
            raise
        raise ConfigError(
            f"{config.dataset} in {data_dir} is prepared as TFRecord files, which the grain "
            "input pipeline cannot read; set --config.data_dir to a folder of ArrayRecord files "
            "(embedded datasets are prepared there on first use; Fashion-MNIST: python -m "
            "experiments.image_classification.datasets prepare_fashion_mnist --file_format "
            "array_record --data_dir DIR) or set --config.input_pipeline=memory."
        ) from None


def _records(config, builder, builder_class, splits, random_access: bool, whole: bool):
    """Per split, its raw rows (`splits.Records`) and what names their files: ArrayRecord
    files are read at random where they lie (for `random_access` they must be ArrayRecord);
    other files, or all with `whole`, are read into memory (named None)."""
    file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
    if random_access or (not whole and builder.is_prepared() and file_format == "array_record"):
        if builder_class is not None and not builder.is_prepared():
            data.import_tensorflow()  # tfds writes the files with it
            builder.download_and_prepare()
        records = {split: streaming.tfds_source(builder, split) for split in splits}
        return records, {split: streaming.description(builder, split) for split in splits}
    records = {
        split: ArrayRecords(
            data.load_tfds_arrays(config.dataset, split, config.data_dir, builder_class)
        )
        for split in splits
    }
    return records, dict.fromkeys(splits)


def load_data(config: ml_collections.ConfigDict, artifacts_dir: str) -> data.Dataset:
    """Inputs as float32 standardized per channel by the training split's statistics; with
    `config.classes` only those classes (relabelled 0..k-1), with
    `config.train_examples_per_class` only the first N training examples of each; with
    `config.validation_examples` = N the last N training examples are the only evaluation
    split, "validation" (hyperparameters chosen without looking at the test split).

    The splits are the raw rows and this preparation, whichever input pipeline reads them:
    ArrayRecord files are read where they lie, other files read into memory.
    """
    if config.dataset not in DATASETS:
        raise ConfigError(
            f"config.dataset '{config.dataset}' is not an image classification dataset; "
            f"choose one of {', '.join(DATASETS)}."
        )
    builder_class, input_key, eval_splits, num_classes = DATASETS[config.dataset]
    classes = _checked_classes(config, num_classes)
    per_class = config.get("train_examples_per_class", 0)
    if per_class < 0:
        raise ConfigError(
            f"config.train_examples_per_class is {per_class}; set it to 0 (all) or more."
        )
    held_out = config.get("validation_examples", 0)
    if held_out < 0:
        raise ConfigError(
            f"config.validation_examples is {held_out}; set it to 0 (evaluate on the test "
            "split) or a number of training examples to hold out."
        )
    if held_out:
        eval_splits = ("validation",)
    subset = len(classes) != num_classes or per_class > 0
    random_access = input_pipeline.reads_at_random(config)  # which only ArrayRecord files allow
    if random_access and (subset or held_out):
        raise ConfigError(
            "config.classes, config.train_examples_per_class and config.validation_examples "
            "need the in-memory input pipeline; set --config.input_pipeline=memory."
        )
    # One builder: tfds fixes a builder class's file format at its first construction.
    builder = _builder(config, builder_class, random_access)
    records, descriptions = _records(
        config, builder, builder_class, ("train", *(() if held_out else eval_splits)),
        random_access, whole=subset or held_out > 0,
    )  # fmt: skip
    if held_out:
        records["train"], records["validation"] = _held_out(config, records["train"], held_out)
        descriptions["validation"] = None
    train = records["train"]
    # Statistics of every training image (labels unused), so that runs on different class
    # subsets of one dataset (pretraining, fine-tuning) see their inputs scaled alike.
    mean, std = _cached_statistics(
        artifacts_dir,
        descriptions["train"],
        lambda: _statistics(lambda a, b: train.read(slice(a, b))[input_key], len(train)),
    )
    raw_inputs = train.read(slice(0, 1))[input_key]
    if subset:
        _check_examples_per_class(train.read(slice(None))["label"], classes, per_class)
        for split, cap in (("train", per_class), *((name, 0) for name in eval_splits)):
            chosen = select_classes(records[split].read(slice(None))["label"], classes, cap)
            records[split] = ArrayRecords(records[split].read(chosen))
    relabel = np.zeros(num_classes, np.int64)
    relabel[classes] = np.arange(len(classes))
    prepare = functools.partial(_prepare, input_key=input_key, mean=mean, std=std, relabel=relabel)
    splits = {split: data.Split(records[split], prepare, descriptions[split]) for split in records}
    return data.Dataset(
        train=splits["train"],
        eval_splits={split: splits[split] for split in eval_splits},
        info={
            "num_classes": len(classes),
            # What an export needs to prepare raw inputs as above and name the classes.
            "original_classes": [int(c) for c in classes],
            "input_mean": mean.tolist(),
            "input_std": std.tolist(),
            "raw_shape": list(raw_inputs.shape[1:]),
            "raw_dtype": str(raw_inputs.dtype),
        },
    )


def _held_out(config, train: ArrayRecords, count: int) -> tuple[ArrayRecords, ArrayRecords]:
    """(the first examples, the last `count`) of the training rows."""
    if count >= len(train):
        raise ConfigError(
            f"config.validation_examples={count} leaves no training examples of the "
            f"{len(train)} in {config.dataset}'s train split; set it to fewer, e.g. 5000."
        )
    rows, cut = train.read(slice(None)), len(train) - count
    return (
        ArrayRecords({key: value[:cut] for key, value in rows.items()}),
        ArrayRecords({key: value[cut:] for key, value in rows.items()}),
    )


def select_classes(labels: np.ndarray, classes: np.ndarray, per_class: int = 0) -> np.ndarray:
    """Indices `[n]` (in split order) of the examples whose label `[examples]` is one of
    `classes` `[k]`; with `per_class` > 0 only the first `per_class` of each class."""
    chosen = np.flatnonzero(np.isin(labels, classes))
    if per_class:
        keep = np.zeros(len(chosen), bool)
        for label in classes:
            keep[np.flatnonzero(labels[chosen] == label)[:per_class]] = True
        chosen = chosen[keep]
    return chosen


def _checked_classes(config: ml_collections.ConfigDict, num_classes: int) -> np.ndarray:
    """`config.classes` (all when empty) as an array `[k]`: label classes[i] becomes i."""
    classes = tuple(config.get("classes", ())) or tuple(range(num_classes))
    valid = all(isinstance(c, int) and not isinstance(c, bool) for c in classes)
    if (
        not valid
        or len(set(classes)) != len(classes)
        or not set(classes) <= set(range(num_classes))
    ):
        raise ConfigError(
            f"config.classes={classes} must be distinct labels of {config.dataset} "
            f"(0 to {num_classes - 1}); set it like --config.classes='(5, 6, 7, 8, 9)'."
        )
    return np.asarray(classes)


def _check_examples_per_class(labels: np.ndarray, classes: np.ndarray, per_class: int) -> None:
    for label in classes:
        available = int(np.sum(labels == label))
        if per_class > available:
            raise ConfigError(
                f"config.train_examples_per_class={per_class} but class {label} has only "
                f"{available} training examples; set it to {available} or fewer."
            )


def create_model(config: ml_collections.ConfigDict, info: dict):
    """`config.model.name` picks the model; the other `config.model` keys are its fields."""
    return model_from_config(
        MODELS,
        config.model,
        num_classes=info["num_classes"],
        **precision.model_dtypes(config),
    )


def model_inputs(batch):
    return (batch["inputs"],)


def loss(logits, batch, *, label_smoothing: float = 0.0):
    """Cross-entropy per example against the label smoothed by `label_smoothing` (1 - s on
    the label, s / classes on every class), each example weighted 1."""
    if label_smoothing:
        labels = jax.nn.one_hot(batch["label"], logits.shape[-1], dtype=logits.dtype)
        losses = optax.softmax_cross_entropy(logits, optax.smooth_labels(labels, label_smoothing))
    else:
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return losses, jnp.ones_like(losses)


def metric_sums(logits, batch):
    labels = batch["label"]
    return {
        "cross_entropy": optax.softmax_cross_entropy_with_integer_labels(logits, labels),
        "correct": (logits.argmax(-1) == labels).astype(jnp.float32),
        "count": jnp.ones(labels.shape, jnp.float32),
    }


def summarize(sums: dict[str, float]) -> dict[str, float]:
    return {
        "loss": sums["cross_entropy"] / sums["count"],
        "accuracy": sums["correct"] / sums["count"],
    }


def get_task(config: ml_collections.ConfigDict) -> Task:
    """One label per example, or several with `config.loss = "binary_cross_entropy"`."""
    loss_name = config.get("loss", "cross_entropy")
    if loss_name not in LOSSES:
        raise ConfigError(
            f"config.loss '{loss_name}' is not an image classification loss; "
            f"choose one of {', '.join(LOSSES)}."
        )
    if loss_name == "binary_cross_entropy":
        from experiments.image_classification import multi_label  # it builds on this module

        return multi_label.get_task(config)
    if config.get("labels", "class") != "class":
        raise ConfigError(
            f"config.labels '{config.labels}' gives several labels per example; set "
            "--config.loss=binary_cross_entropy, or --config.labels=class for one label."
        )
    return Task(
        load_data=functools.partial(load_data, config),
        create_model=functools.partial(create_model, config),
        model_inputs=model_inputs,
        loss=functools.partial(loss, label_smoothing=config.get("label_smoothing", 0.0)),
        metric_sums=metric_sums,
        summarize=summarize,
        image_keys=("inputs",),
        serving=lambda: importlib.import_module("experiments.image_classification.serving"),
    )
