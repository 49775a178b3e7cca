"""The benchmarked experiments: which config, which data, and how `--quick` shrinks them."""

import dataclasses
import importlib.util
import os
from collections.abc import Callable

import ml_collections
import numpy as np

from research.core import data
from research.core.task import Task

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO_ROOT, "experiments")


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One row of the suite: a config file, overrides, and where its data comes from.

    `synthetic` builds a `Dataset` of random arrays of the real shapes from the config; it is
    used instead of the task's data when `always_synthetic`, or when the real data is missing.
    `loop_steps`, when set, replaces the full loop's step cap (measure.LOOP_STEPS): a step
    as fast as the regression MLP's on the device needs many more to fill the loop's time.
    """

    name: str
    config_path: str
    overrides: dict = dataclasses.field(default_factory=dict)
    quick_overrides: dict = dataclasses.field(default_factory=dict)
    synthetic: Callable[[ml_collections.ConfigDict], data.Dataset] | None = None
    always_synthetic: bool = False
    note: str = ""
    loop_steps: int | None = None


def synthetic_images(shape: tuple[int, ...], num_classes: int = 10, count: int = 2048):
    """Standard-normal images `[count, *shape]` with uniform labels, as the task prepares them."""

    def build(config: ml_collections.ConfigDict) -> data.Dataset:
        del config
        rng = np.random.default_rng(0)
        train = {
            "inputs": rng.standard_normal((count, *shape), dtype=np.float32),
            "label": rng.integers(0, num_classes, count).astype(np.int32),
        }
        return data.Dataset(train=train, eval_splits={}, info={"num_classes": num_classes})

    return build


def synthetic_tokens(vocab_size: int, count: int = 4096, min_length: int = 16):
    """Random sentences of `min_length` to `max_*_length - 1` tokens plus EOS, padded.

    Ids 0-2 are PAD, BOS and EOS (experiments/seq2seq/decoding.py); a shared vocabulary.
    """

    def sentences(rng, length):
        ids = rng.integers(3, vocab_size, (count, length)).astype(np.int32)
        lengths = rng.integers(min_length, length, count)
        positions = np.arange(length)[None, :]
        ids[positions == lengths[:, None]] = 2  # EOS
        ids[positions > lengths[:, None]] = 0  # padding
        return ids

    def build(config: ml_collections.ConfigDict) -> data.Dataset:
        rng = np.random.default_rng(0)
        train = {
            "inputs": sentences(rng, config.max_input_length),
            "targets": sentences(rng, config.max_target_length),
        }
        info = {"input_vocab_size": vocab_size, "target_vocab_size": vocab_size}
        return data.Dataset(train=train, eval_splits={}, info=info)

    return build


BENCHMARKS = [
    Benchmark("regression_mlp", "regression/configs/diabetes_mlp.py"),
    Benchmark(
        "regression_mlp_resident",
        "regression/configs/diabetes_mlp.py",
        overrides={
            "input_pipeline": "device",
            "train_order": "hash",
            "steps_per_dispatch": 1000,
            "steps_per_dispatch_unroll": False,
            "num_train_steps": 1000000,
            "eval_every_steps": 1000000,
            "log_every_steps": 100000,
            "checkpoint_every_steps": 500000,
        },  # fmt: skip
        loop_steps=1000000,
        note="data on the device, batches drawn there (train_order hash), 1000 steps per call "
        "(lax.scan), 1M steps, log every 100k and checkpoint every 500k (about every 1 and 5 s; "
        "the config's 100 and 600 are every 1 and 5 ms at this speed)",
    ),
    Benchmark("mnist1d_cnn", "image_classification/configs/mnist1d_cnn.py"),
    Benchmark(
        "mnist1d_cnn_resident",
        "image_classification/configs/mnist1d_cnn.py",
        overrides={"input_pipeline": "device", "train_order": "hash", "steps_per_dispatch": 10},
        note="data on the device, batches drawn there (train_order hash), 10 steps per call "
        "(unrolled), the config's cadences",
    ),
    Benchmark(
        "fashion_mnist_small_cnn",
        "image_classification/configs/fashion_mnist_small_cnn.py",
        synthetic=synthetic_images((28, 28, 1)),
    ),
    Benchmark(
        "fashion_mnist_small_cnn_grain",
        "image_classification/configs/fashion_mnist_small_cnn.py",
        overrides={"input_pipeline": "grain", "data_dir": "~/tensorflow_datasets_array_record"},
        note="Grain over ArrayRecord (prepare_fashion_mnist --file_format array_record)",
    ),
    Benchmark(
        "cifar10_resnet18",
        "image_classification/configs/cifar10_resnet.py",
        quick_overrides={"batch_size": 32},
        synthetic=synthetic_images((32, 32, 3)),
        always_synthetic=True,
    ),
    Benchmark("scan_transformer", "seq2seq/configs/scan_transformer.py"),
    Benchmark(
        "multi30k_transformer",
        "seq2seq/configs/translate_folder_transformer.py",
        overrides={"max_input_length": 32, "max_target_length": 32},
        synthetic=synthetic_tokens(8000),
        always_synthetic=True,
        note="3 layers, width 256, 4 heads, MLP 1024, shared vocabulary 8000, length 32",
    ),
]
BY_NAME = {benchmark.name: benchmark for benchmark in BENCHMARKS}


def load_config(
    benchmark: Benchmark, quick: bool, settings: dict | None = None
) -> ml_collections.ConfigDict:
    """The benchmark's config file with its overrides (and the quick ones under --quick),
    then `settings` (run.py --set)."""
    spec = importlib.util.spec_from_file_location(
        "benchmark_config", os.path.join(CONFIGS, benchmark.config_path)
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for key, value in {
        **benchmark.overrides,
        **(benchmark.quick_overrides if quick else {}),
        **(settings or {}),
    }.items():
        config[key] = value
    return config


def load_dataset(
    benchmark: Benchmark, config: ml_collections.ConfigDict, task: Task, artifacts_dir: str
) -> tuple[data.Dataset, str]:
    """(training data without evaluation splits, "real" or "synthetic")."""
    if benchmark.synthetic is not None and benchmark.always_synthetic:
        return benchmark.synthetic(config), "synthetic"
    try:
        dataset = task.load_data(artifacts_dir)
    except data.DatasetMissingError:
        if benchmark.synthetic is None:
            raise
        return benchmark.synthetic(config), "synthetic (real data not prepared)"
    return dataclasses.replace(dataset, eval_splits={}), "real"


def get_task(config: ml_collections.ConfigDict) -> Task:
    import experiments

    return experiments.get_task(config)
