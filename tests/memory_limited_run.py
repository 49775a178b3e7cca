"""Trains on generated images larger than memory allows (for tests/test_memory_limit.py).

python -m tests.memory_limited_run generate DATA_DIR IMAGES
python -m tests.memory_limited_run train DATA_DIR WORKDIR PIPELINE KILL_AT_STEP

`generate` writes IMAGES random 128x128x3 uint8 images as ArrayRecord (tfds); `train` trains a
small MLP on them, killing itself like `kill -9` before step KILL_AT_STEP (0: never).
"""

import functools
import os
import sys
from unittest import mock

import numpy as np
import tensorflow_datasets as tfds

from experiments.image_classification import task as image_task
from research.core import data, trainer
from tests.helpers import REPO_ROOT, load_config, run_experiment

SHAPE = (128, 128, 3)
MLP_CONFIG = os.path.join(REPO_ROOT, "experiments/image_classification/configs/mnist1d_mlp.py")


class RawImages(data.GeneratedLocally, tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Random images stored as raw uint8 tensors (no PNG: fast to write and to read)."""

    VERSION = tfds.core.Version("1.0.0")
    IMAGES = 16  # `generate` sets the count

    def _info(self):
        features = {
            "image": tfds.features.Tensor(shape=SHAPE, dtype=np.uint8, encoding="bytes"),
            "label": tfds.features.ClassLabel(num_classes=10),
        }
        return tfds.core.DatasetInfo(
            builder=self, features=tfds.features.FeaturesDict(features), disable_shuffling=True
        )

    def _split_generators(self, dl_manager):
        return {
            "train": self._generate_examples(0, self.IMAGES),
            "test": self._generate_examples(1, 64),
        }

    def _generate_examples(self, seed, count):
        rng = np.random.default_rng(seed)
        for index in range(count):
            image = rng.integers(0, 256, SHAPE, dtype=np.uint8)
            yield index, {"image": image, "label": int(image[0, 0, 0]) % 10}


def config(data_dir: str):
    return load_config(
        MLP_CONFIG, dataset="raw_images", data_dir=data_dir, input_pipeline="grain",
        input_workers=1, batch_size=16, eval_batch_size=64, num_train_steps=12,
        warmup_steps=2, log_every_steps=4, eval_every_steps=12, checkpoint_every_steps=4,
        **{"model.hidden_sizes": (8,)},
    )  # fmt: skip


def _kill_before(step_to_kill: int, device_batches):
    @functools.wraps(device_batches)
    def wrapper(run, step):
        if step == step_to_kill:
            os.kill(os.getpid(), 9)
        return device_batches(run, step)

    return wrapper


def main() -> None:
    command, data_dir = sys.argv[1:3]
    entry = (RawImages, "image", ("test",), 10)
    with mock.patch.dict(image_task.DATASETS, {"raw_images": entry}):
        if command == "generate":
            RawImages.IMAGES = int(sys.argv[3])
            RawImages(data_dir=data_dir, file_format="array_record").download_and_prepare()
            return
        workdir, pipeline, kill_at = sys.argv[3], sys.argv[4], int(sys.argv[5])
        if kill_at:
            trainer.Run.device_batches = _kill_before(kill_at, trainer.Run.device_batches)
        run_config = config(data_dir)
        run_config.input_pipeline = pipeline
        summary = run_experiment(run_config, workdir)
        print("params_sha256", summary["params_sha256"])


if __name__ == "__main__":
    main()
