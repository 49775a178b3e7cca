"""A tiny image dataset generated locally (a tfds builder), shared by the streaming tests.

One module, imported as `tests.tiny_images` everywhere: tfds refuses a builder registered twice.
"""

import numpy as np
import tensorflow_datasets as tfds

from research.core import data


class TinyImages(data.GeneratedLocally, tfds.core.GeneratorBasedBuilder):
    """Random 8x8 RGB images (PNG-encoded, as tfds stores real images), labels by brightness."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = {
            "image": tfds.features.Image(shape=(8, 8, 3)),
            "label": tfds.features.ClassLabel(num_classes=10),
        }
        return tfds.core.DatasetInfo(
            builder=self, features=tfds.features.FeaturesDict(features), disable_shuffling=True
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 300), "test": self._generate_examples(1, 50)}

    def _generate_examples(self, seed, count):
        images = np.random.default_rng(seed).integers(0, 256, (count, 8, 8, 3), dtype=np.uint8)
        for index, image in enumerate(images):
            yield index, {"image": image, "label": int(image.mean() * 10 // 256)}
