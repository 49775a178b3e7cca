"""Offline tensorflow-datasets sources for image classification: MNIST-1D and Fashion-MNIST.

Nothing here touches the network; MNIST-1D is generated, Fashion-MNIST is read from Debian's files.
"""

import argparse
import gzip
import os
import random
import shutil
import tempfile
import time

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification.mnist import FashionMNIST

from research.core import data

MNIST1D_LENGTH = 40
MNIST1D_NUM_CLASSES = 10

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILENAMES = {
    "train_data": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_data": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
FASHION_MNIST_SPLIT_SIZES = {"train": 60_000, "test": 10_000}


def generate_mnist1d() -> dict[str, np.ndarray]:
    """MNIST-1D with the package defaults: x [4000, 40], y [4000], x_test [1000, 40], y_test [1000].

    make_dataset reseeds numpy's and Python's global RNGs, so both states are restored afterwards.
    """
    # Imported here: mnist1d pulls in scipy and matplotlib's pyplot, two seconds of every
    # launch that reads the generated files and never calls it.
    from mnist1d.data import get_dataset_args, make_dataset

    numpy_state = np.random.get_state()
    python_state = random.getstate()
    try:
        dataset = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    return {key: dataset[key] for key in ("x", "y", "x_test", "y_test")}


class Mnist1d(data.GeneratedLocally, tfds.core.GeneratorBasedBuilder):
    """MNIST-1D (Greydanus 2020) generated locally with mnist1d's default arguments."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "mnist1d make_dataset(get_dataset_args()), signals cast to float32."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "MNIST-1D: 5,000 one-dimensional signals of length 40 (4,000 train, 1,000 test) "
                "in 10 digit classes, generated with the mnist1d package defaults (seed 42)."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "signal": tfds.features.Tensor(shape=(MNIST1D_LENGTH,), dtype=np.float32),
                    "label": tfds.features.ClassLabel(num_classes=MNIST1D_NUM_CLASSES),
                }
            ),
            supervised_keys=("signal", "label"),
            homepage="https://github.com/greydanus/mnist1d",
            # Keep mnist1d's own example order so the stored splits match make_dataset exactly.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # Generated locally; nothing to download.
        dataset = generate_mnist1d()
        return {
            "train": self._generate_examples(dataset["x"], dataset["y"]),
            "test": self._generate_examples(dataset["x_test"], dataset["y_test"]),
        }

    def _generate_examples(self, signals: np.ndarray, labels: np.ndarray):
        """Yields (index, example) for signals [N, 40] and labels [N]."""
        for index, (signal, label) in enumerate(zip(signals, labels, strict=True)):
            yield index, {"signal": signal.astype(np.float32), "label": int(label)}


class LocalFashionMnist(FashionMNIST, skip_registration=True):
    """tfds' own fashion_mnist builder, reading already-decompressed IDX files from `raw_dir`.

    Registration is skipped so tfds' registered `fashion_mnist` stays the one found by name; the
    data written here lands in the same `fashion_mnist/<version>` directory it reads from.
    """

    name = "fashion_mnist"

    def __init__(self, *, raw_dir: str, **kwargs):
        self._raw_dir = raw_dir
        super().__init__(**kwargs)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> list:
        del dl_manager  # The parent downloads and checks tfds' checksums, which Debian's .gz fail.
        paths = {
            key: os.path.join(self._raw_dir, filename.removesuffix(".gz"))
            for key, filename in FASHION_MNIST_FILENAMES.items()
        }
        return [
            tfds.core.SplitGenerator(
                name=split,
                gen_kwargs=dict(
                    num_examples=num_examples,
                    data_path=paths[f"{split}_data"],
                    label_path=paths[f"{split}_labels"],
                ),
            )
            for split, num_examples in FASHION_MNIST_SPLIT_SIZES.items()
        ]


def prepare_fashion_mnist(
    data_dir: str, idx_dir: str = DEBIAN_FASHION_MNIST_DIR, file_format: str = "tfrecord"
) -> None:
    """Writes tfds' `fashion_mnist` (train 60,000 / test 10,000 images [28, 28, 1]) into data_dir.

    Afterwards `tfds.builder("fashion_mnist", data_dir=data_dir)` loads it without any download;
    `file_format="array_record"` makes it readable at random (`config.input_pipeline=grain`).
    """
    missing = [
        filename
        for filename in FASHION_MNIST_FILENAMES.values()
        if not os.path.isfile(os.path.join(idx_dir, filename))
    ]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST IDX files missing from {idx_dir} ({', '.join(missing)}); install them "
            "with `apt-get install -y dataset-fashion-mnist` or pass idx_dir pointing at them."
        )
    with tempfile.TemporaryDirectory() as raw_dir:
        # The parent's _generate_examples reads raw IDX bytes, so decompress first.
        for filename in FASHION_MNIST_FILENAMES.values():
            target = os.path.join(raw_dir, filename.removesuffix(".gz"))
            with (
                gzip.open(os.path.join(idx_dir, filename), "rb") as source,
                open(target, "wb") as destination,
            ):
                shutil.copyfileobj(source, destination)
        builder = LocalFashionMnist(raw_dir=raw_dir, data_dir=data_dir, file_format=file_format)
        # A throwaway download_dir keeps empty downloads/ folders out of data_dir.
        builder.download_and_prepare(download_dir=os.path.join(raw_dir, "downloads"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare_fashion_mnist", help="Build tfds fashion_mnist offline.")
    prepare.add_argument("--data_dir", required=True, help="tfds data directory to write into.")
    prepare.add_argument("--idx_dir", default=DEBIAN_FASHION_MNIST_DIR, help="IDX .gz directory.")
    prepare.add_argument(
        "--file_format", default="tfrecord", choices=("tfrecord", "array_record"),
        help="array_record: random access for config.input_pipeline=grain.",
    )  # fmt: skip
    arguments = parser.parse_args()
    start = time.perf_counter()
    prepare_fashion_mnist(arguments.data_dir, arguments.idx_dir, arguments.file_format)
    print(f"Prepared fashion_mnist in {arguments.data_dir} ({time.perf_counter() - start:.1f} s).")


if __name__ == "__main__":
    main()
