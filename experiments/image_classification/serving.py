"""Image classification export and codec: images, .npy arrays or JSON arrays -> classes.

Inputs are standardized on the host with the training split's per-channel statistics, in
float64 as `task.load_data` does; images are converted and resized to the training shape.
"""

import jax
import jax.numpy as jnp
import numpy as np

from research.core import data
from research.deploy.export import ExportSpec, Function
from research.deploy.inference import InputError
from research.deploy.options import Option

DIGITS = tuple(str(digit) for digit in range(10))
CLASS_NAMES = {
    "mnist1d": DIGITS,
    "mnist": DIGITS,
    "fashion_mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),  # fmt: skip
    "cifar10": (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ),  # fmt: skip
}
CLASS_NAMES_FILE = "class_names.txt"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_TOP_K = 3
PREDICT_OPTIONS = {
    "top_k": Option(int, f"Image classification: probabilities shown (default {DEFAULT_TOP_K})."),
}


def export_spec(config, model, dataset: data.Dataset, artifacts_dir: str, options) -> ExportSpec:
    """`predict`: `inputs [batch, ...]` -> `probabilities [batch, classes]`, `class [batch]`."""
    del artifacts_dir
    if options:
        raise InputError(f"Image classification exports take no options ({', '.join(options)}).")
    info = dataset.info
    original = info["original_classes"]  # a run on a subset of classes relabels them 0..k-1
    all_names = CLASS_NAMES.get(config.dataset, tuple(map(str, range(max(original) + 1))))
    names = [all_names[index] for index in original]

    def predict(variables, inputs):
        logits = model.apply(variables, inputs, train=False)
        return {
            "probabilities": jax.nn.softmax(logits.astype(jnp.float32)),
            "class": jnp.argmax(logits, axis=-1).astype(jnp.int32),
        }

    input_shape = tuple(dataset.train.take(np.arange(1))["inputs"].shape[1:])  # not read whole
    return ExportSpec(
        functions={"predict": Function(predict, [("inputs", "float32", input_shape)])},
        default_function="predict",
        assets={CLASS_NAMES_FILE: ("\n".join(names) + "\n").encode()},
        metadata={key: info[key] for key in ("input_mean", "input_std", "raw_shape", "raw_dtype")},
        eval_inputs=lambda arrays: {"inputs": arrays["inputs"]},
    )


class Codec:
    """A JSON instance is a nested list of raw values (pixels 0-255 for images) of one input."""

    def __init__(self, model, options: dict):
        unknown = set(options) - set(PREDICT_OPTIONS)
        if unknown:
            raise InputError(f"Image classifiers take only the option top_k, not {unknown}.")
        metadata = model.signature["metadata"]
        self.function = model.signature["default_function"]
        with open(model.asset_path(CLASS_NAMES_FILE), encoding="utf-8") as file:
            self.class_names = file.read().splitlines()
        self.top_k = int(options.get("top_k") or DEFAULT_TOP_K)
        if not 1 <= self.top_k <= len(self.class_names):
            raise InputError(f"--top_k={self.top_k} must be between 1 and the number of classes.")
        self.mean = np.asarray(metadata["input_mean"], np.float64)
        self.std = np.asarray(metadata["input_std"], np.float64)
        self.raw_shape = tuple(metadata["raw_shape"])
        self.raw_dtype = np.dtype(metadata["raw_dtype"])
        # A single channel may be left out: [40] for [40, 1], [28, 28] for [28, 28, 1].
        self.shapes = {self.raw_shape}
        if self.raw_shape[-1] == 1:
            self.shapes.add(self.raw_shape[:-1])
        # And the shape the signature shows per example ([40, 1] for a 1-D signal of [40]).
        (model_input,) = model.signature["functions"][self.function]["inputs"]
        model_shape = tuple(model_input["shape"][1:])
        if model_shape == (*self.raw_shape, 1):
            self.shapes.add(model_shape)

    def _expected(self) -> str:
        values = "integers 0-255" if self.raw_dtype == np.uint8 else "numbers"
        return f"an array of shape {list(self.raw_shape)} of {values}"

    def _prepare(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        if raw.shape not in self.shapes:
            raise InputError(f"expected {self._expected()}, got shape {list(raw.shape)}")
        if raw.dtype.kind not in "iuf":
            raise InputError(f"expected {self._expected()}, got {raw.dtype} values")
        if not np.all(np.isfinite(raw)):
            raise InputError(f"expected {self._expected()}, got values that are not finite")
        cast = raw.astype(self.raw_dtype)  # a decimal is rounded to the bits the data holds
        if self.raw_dtype.kind in "iu" and not np.array_equal(cast, raw):
            raise InputError(f"expected {self._expected()}, got values outside that range")
        # The raw dtype first, then float64 arithmetic: the bits the trainer's model saw.
        inputs = cast.reshape(self.raw_shape)
        if inputs.ndim == 1:  # a 1-D signal gets a channel axis, as in task.load_data
            inputs = inputs[..., None]
        return {"inputs": ((inputs - self.mean) / self.std).astype(np.float32)}

    def parse(self, instance) -> dict[str, np.ndarray]:
        try:
            raw = np.asarray(instance)
        except ValueError:  # ragged nesting
            raise InputError(f"expected {self._expected()}, got ragged lists") from None
        if raw.dtype == bool:
            raise InputError(f"expected {self._expected()}, got booleans")
        return self._prepare(raw)

    def _image(self, path: str) -> np.ndarray:
        from PIL import Image  # only image inputs need it

        if len(self.raw_shape) != 3:
            raise InputError(f"this model takes .npy files of {self._expected()}, not images")
        height, width, channels = self.raw_shape
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            return np.asarray(image, np.uint8).reshape(height, width, channels)

    def read(self, source: str):
        """(where, example or InputError) for an image file or each row of a .npy file."""
        try:
            if source.lower().endswith(IMAGE_SUFFIXES):
                yield source, self._prepare(self._image(source))
                return
            if not source.lower().endswith(".npy"):
                raise InputError(f"expected a .npy, .png or .jpg file of {self._expected()}")
            array = np.load(source, allow_pickle=False)
        except InputError as error:
            yield source, InputError(f"{source}: {error}")
            return
        except (OSError, ValueError, EOFError) as error:  # missing, empty, not an image
            message = str(error).split("\n")[0]
            yield source, InputError(f"{source} cannot be read ({message}); expected a file of "
                                     f"{self._expected()}")  # fmt: skip
            return
        if array.size == 0:
            yield source, InputError(f"{source} holds no values; expected {self._expected()}")
            return
        one = array.shape in self.shapes or array.ndim <= min(map(len, self.shapes))
        rows = [("", array)] if one else [
            (f" row {index}", row) for index, row in enumerate(array)
        ]  # fmt: skip
        for suffix, row in rows:
            try:
                yield source + suffix, self._prepare(np.asarray(row))
            except InputError as error:
                yield source + suffix, InputError(f"{source}{suffix}: {error}")

    def format(self, outputs: dict[str, np.ndarray]) -> dict:
        probabilities = outputs["probabilities"]
        best = np.argsort(-probabilities, kind="stable")[: self.top_k]
        label = int(outputs["class"])
        return {
            "class": label,
            "class_name": self.class_names[label],
            "top_k": [
                {
                    "class": int(index),
                    "class_name": self.class_names[index],
                    "probability": float(probabilities[index]),
                }
                for index in best
            ],
        }
