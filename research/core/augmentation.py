"""Image augmentation (random crop with padding, horizontal flip, random erasing) as a pure
function of (seed, step, example): both input paths call `augment` on a host's rows of a
global batch.
"""

import dataclasses

import ml_collections
import numpy as np

from research.core.config import ConfigError

# Mixed into the seed so augmentation draws never coincide with the epoch permutations
# (seed, epoch) or the bucket orders (seed, epoch, 1) of research/core/data.py.
AUGMENTATION_STREAM = 2
# Random erasing (Zhong et al., 2017): the erased rectangle covers this fraction of the image
# and has a height / width ratio in this range, both drawn uniformly (the ratio in log space).
ERASE_AREA = (0.02, 0.4)
ERASE_ASPECT = (0.3, 1 / 0.3)


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """What to do to the images under `key`: `[batch, height, width, channels]`."""

    key: str
    crop_padding: int = 0  # pixels of zero padding on each side before a random crop
    horizontal_flip: bool = False
    erase_probability: float = 0.0  # each image has a random rectangle set to zero

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.horizontal_flip or self.erase_probability > 0


def from_config(config: ml_collections.ConfigDict, image_keys: tuple[str, ...]):
    """The config's `Augmentation` (`config.augmentation`), or None when it is off."""
    settings = config.augmentation
    augmentation = Augmentation(
        "",
        int(settings.crop_padding),
        bool(settings.horizontal_flip),
        float(settings.get("erase_probability", 0.0)),
    )
    if augmentation.crop_padding < 0:
        raise ConfigError(
            f"config.augmentation.crop_padding is {augmentation.crop_padding}; set it to 0 "
            "(off) or a number of pixels."
        )
    if not 0 <= augmentation.erase_probability <= 1:
        raise ConfigError(
            f"config.augmentation.erase_probability is {augmentation.erase_probability}; set "
            "it from 0 (off) to 1."
        )
    if not augmentation.active:
        return None
    if len(image_keys) != 1:
        raise ConfigError(
            f"config.augmentation is on but task '{config.task}' has no images to augment; "
            "set --config.augmentation.crop_padding=0 --config.augmentation.horizontal_flip=False "
            "--config.augmentation.erase_probability=0."
        )
    return dataclasses.replace(augmentation, key=image_keys[0])


def augment(
    batch: dict[str, np.ndarray],
    augmentation: Augmentation | None,
    global_batch_size: int,
    seed: int,
    step: int,
    rows: slice,
) -> dict[str, np.ndarray]:
    """`batch` (rows `rows` of the global batch at `step`) with its images cropped, flipped
    and erased.

    The draws are made for the whole global batch from (seed, step), so an example's
    augmentation depends on its position in the global batch, not on the host layout.
    """
    if augmentation is None:
        return batch
    images = batch[augmentation.key]
    if images.ndim != 4:
        raise ConfigError(
            f"config.augmentation needs images [batch, height, width, channels], but "
            f"'{augmentation.key}' has shape {images.shape[1:]}; turn config.augmentation off."
        )
    rng = np.random.default_rng([seed, step, AUGMENTATION_STREAM])
    padding = augmentation.crop_padding
    offsets = rng.integers(0, 2 * padding + 1, (global_batch_size, 2))[rows]
    flips = (rng.random(global_batch_size) < 0.5)[rows]
    height, width = images.shape[1:3]
    if padding:
        padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
        images = np.stack(
            [padded[i, y : y + height, x : x + width] for i, (y, x) in enumerate(offsets)]
        )
    if augmentation.horizontal_flip:
        images = np.where(flips[:, None, None, None], images[:, :, ::-1], images)
    if augmentation.erase_probability:
        erased = erased_pixels(
            rng, augmentation.erase_probability, global_batch_size, height, width, rows
        )
        images = images * ~erased[..., None]
    return {**batch, augmentation.key: images}


def erased_pixels(
    rng, probability: float, count: int, height: int, width: int, rows: slice
) -> np.ndarray:
    """`[rows, height, width]` bool: rectangles drawn for all `count` images of the global
    batch (each with `probability`: `ERASE_AREA` of the image, height / width ratio in
    `ERASE_ASPECT`, cut to the image, placed uniformly), drawn out for `rows` alone. Drawn
    after the crops and flips, which it leaves as they were."""
    erase = rng.random(count) < probability
    area = rng.uniform(*ERASE_AREA, count) * height * width
    ratio = np.exp(rng.uniform(*np.log(ERASE_ASPECT), count))
    sizes_y = np.clip(np.round(np.sqrt(area * ratio)), 1, height).astype(int)
    sizes_x = np.clip(np.round(np.sqrt(area / ratio)), 1, width).astype(int)
    tops = (rng.random(count) * (height - sizes_y + 1)).astype(int)
    lefts = (rng.random(count) * (width - sizes_x + 1)).astype(int)
    ys, xs = np.arange(height)[None, :, None], np.arange(width)[None, None, :]
    top, left = tops[rows, None, None], lefts[rows, None, None]
    inside_y = (ys >= top) & (ys < top + sizes_y[rows, None, None])
    inside_x = (xs >= left) & (xs < left + sizes_x[rows, None, None])
    return inside_y & inside_x & erase[rows, None, None]
