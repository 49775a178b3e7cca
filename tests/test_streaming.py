"""Grain over ArrayRecord gives the in-memory path's batches; augmentation is the same on both."""

import os
from unittest import mock

import numpy as np
import pytest

from experiments.image_classification import datasets
from experiments.image_classification import task as image_task
from research.core import augmentation, data, streaming, trainer
from tests import helpers
from tests.helpers import REPO_ROOT, load_config, run_experiment
from tests.tiny_images import TinyImages

CIFAR_CONFIG = os.path.join(REPO_ROOT, "experiments/image_classification/configs/cifar10_resnet.py")
MLP_CONFIG = os.path.join(REPO_ROOT, "experiments/image_classification/configs/mnist1d_mlp.py")


@pytest.fixture
def tiny_images(tmp_path):
    """A config of the CIFAR-10 ResNet (crops and flips on) reading TinyImages, made small."""
    entry = (TinyImages, "image", ("test",), 10)
    with mock.patch.dict(image_task.DATASETS, {"tiny_images": entry}):
        config = load_config(
            CIFAR_CONFIG, dataset="tiny_images", batch_size=32, eval_batch_size=50,
            num_train_steps=12, warmup_steps=2, log_every_steps=4, eval_every_steps=12,
            checkpoint_every_steps=6, input_workers=1,
            **{"model.stage_sizes": (1,), "model.width": 4},
        )  # fmt: skip
        config.data_dir = str(tmp_path / "data")
        yield config


def _dataset(config, pipeline):
    config = config.copy_and_resolve_references()
    config.input_pipeline = pipeline
    return image_task.load_data(config, "")


def test_grain_batches_equal_in_memory_batches_on_any_host_layout(tiny_images):
    config = tiny_images
    grain_data = _dataset(config, "grain")  # prepares TinyImages as ArrayRecord
    memory_data = _dataset(config, "memory")  # reads the same files whole
    assert isinstance(grain_data.train.records, streaming.TfdsRecords)  # read from the files
    np.testing.assert_array_equal(
        streaming.read_whole(grain_data.eval_splits["test"])["inputs"],
        memory_data.eval_splits["test"]["inputs"],
    )
    crops = augmentation.from_config(config, ("inputs",))
    assert crops == augmentation.Augmentation("inputs", 4, True)

    def memory_batch(step, rows=slice(0, 32)):
        batch = data.train_batch(memory_data.train, 32, config.seed, step)
        return augmentation.augment(batch, crops, 32, config.seed, step, rows)

    stream = streaming.stream(grain_data.train, config, crops, workers=1)
    try:
        # Steps 0-11 cross epochs (300 examples, 32 a batch); 5 again: a restart there.
        for step in [*range(12), 5]:
            batch, expected = stream.batch(step), memory_batch(step)
            for key in expected:
                np.testing.assert_array_equal(batch[key], expected[key])
    finally:
        stream.close()
    # Two hosts read rows 0-15 and 16-31 of the global batch, augmented alike.
    global_batch = memory_batch(7)["inputs"]
    for host in range(2):
        with (
            mock.patch.object(data.parallel, "process_count", return_value=2),
            mock.patch.object(data.parallel, "process_index", return_value=host),
        ):
            rows = slice(16 * host, 16 * host + 16)
            reader = streaming.stream(grain_data.train, config, crops, workers=0).reader
            global_rows = global_batch[rows]
            np.testing.assert_array_equal(reader(7)["inputs"], global_rows)
            np.testing.assert_array_equal(memory_batch(7, rows)["inputs"], global_rows)


def test_augmentation_crops_and_flips_as_drawn_from_seed_and_step():
    images = np.arange(2 * 4 * 4 * 1, dtype=np.float32).reshape(2, 4, 4, 1)
    crops = augmentation.Augmentation("x", crop_padding=1, horizontal_flip=True)
    out = augmentation.augment({"x": images}, crops, 2, seed=3, step=9, rows=slice(0, 2))["x"]
    rng = np.random.default_rng([3, 9, augmentation.AUGMENTATION_STREAM])
    offsets, flips = rng.integers(0, 3, (2, 2)), rng.random(2) < 0.5
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
    for i in range(2):
        y, x = offsets[i]
        expected = padded[i, y : y + 4, x : x + 4]
        np.testing.assert_array_equal(out[i], expected[:, ::-1] if flips[i] else expected)


def test_random_erasing_zeroes_one_drawn_rectangle_and_keeps_the_crops_and_flips():
    """Each erased image differs from the cropped and flipped one in exactly one rectangle of
    2-40% of its area, now zero; the crops and flips are those drawn without erasing, and a
    host's rows equal those rows of the global batch."""
    images = np.random.default_rng(0).uniform(1, 2, (64, 12, 10, 1)).astype(np.float32)
    plain = augmentation.Augmentation("x", crop_padding=1, horizontal_flip=True)
    erasing = augmentation.Augmentation("x", 1, True, erase_probability=0.5)
    kept = augmentation.augment({"x": images}, plain, 64, seed=3, step=9, rows=slice(0, 64))["x"]
    out = augmentation.augment({"x": images}, erasing, 64, seed=3, step=9, rows=slice(0, 64))["x"]
    erased = 0
    for before, after in zip(kept, out, strict=True):
        changed = np.argwhere(before[..., 0] != after[..., 0])
        if not len(changed):
            continue
        erased += 1
        (top, left), (bottom, right) = changed.min(0), changed.max(0) + 1
        assert np.all(after[top:bottom, left:right] == 0)  # one rectangle, zero
        assert np.all((after == before) | (after == 0))
        assert (bottom - top) * (right - left) <= 0.4 * 120 + 3  # rounded sides
    assert 16 < erased < 48  # about half, drawn
    host = augmentation.augment(
        {"x": images[16:32]}, erasing, 64, seed=3, step=9, rows=slice(16, 32)
    )["x"]
    np.testing.assert_array_equal(host, out[16:32])
    configs = os.path.join(REPO_ROOT, "experiments/image_classification/configs")
    settings = load_config(os.path.join(configs, "fashion_mnist_small_cnn.py"))
    settings.augmentation.erase_probability = 1.5
    with pytest.raises(trainer.ConfigError, match="erase_probability is 1.5; set it from 0"):
        augmentation.from_config(settings, ("image",))


@pytest.mark.parametrize("steps_per_dispatch", [1, 2])
def test_training_through_grain_ends_with_the_in_memory_parameters(
    tiny_images, tmp_path, steps_per_dispatch
):
    summaries = {}
    for pipeline in ("grain", "memory"):
        config = tiny_images.copy_and_resolve_references()
        config.input_pipeline = pipeline
        config.steps_per_dispatch = steps_per_dispatch  # the prefetch thread stacks 2 steps
        config.input_workers = 0  # Grain in a thread: worker processes are tested above
        summaries[pipeline] = run_experiment(config, tmp_path / pipeline)
    assert summaries["grain"]["params_sha256"] == summaries["memory"]["params_sha256"]
    assert summaries["grain"]["test"] == summaries["memory"]["test"]


def test_grain_for_a_task_without_streaming_is_one_sentence(tmp_path, data_dir):
    config = load_config(
        os.path.join(REPO_ROOT, "experiments/regression/configs/linear_synthetic.py"),
        input_pipeline="grain",
    )
    config.data_dir = data_dir
    with pytest.raises(trainer.ConfigError, match="input_pipeline=memory"):
        run_experiment(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_device_resident_data_refuses_host_augmentation_in_one_sentence(tiny_images, tmp_path):
    config = tiny_images.copy_and_resolve_references()
    config.input_pipeline = "device"  # the CIFAR-10 config crops and flips on the host
    with pytest.raises(trainer.ConfigError, match="augmentation runs on the host"):
        run_experiment(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_batch_groups_refuse_a_model_with_batch_statistics_in_one_sentence(tiny_images, tmp_path):
    config = tiny_images.copy_and_resolve_references()
    config.batch_groups = 4  # the ResNet keeps batch-norm statistics, which blocks cannot share
    with pytest.raises(trainer.ConfigError, match="batch_groups needs a model without state"):
        run_experiment(config, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_uint8_statistics_are_the_exact_sums_the_float64_path_computes():
    images = np.random.default_rng(3).integers(0, 256, (700, 9, 9, 3), dtype=np.uint8)
    mean, std = image_task._statistics(lambda a, b: images[a:b], len(images))
    as_float = image_task._statistics(lambda a, b: images[a:b].astype(np.float64), len(images))
    flat = images.reshape(-1, 3).astype(np.int64)
    count = len(flat)
    expected_mean = flat.sum(axis=0) / count  # integer sums, exact
    expected_std = np.sqrt((flat * flat).sum(axis=0) / count - expected_mean * expected_mean)
    np.testing.assert_array_equal(mean, expected_mean)
    np.testing.assert_array_equal(std, expected_std)
    np.testing.assert_array_equal(as_float[0], mean)  # fashion_mnist's statistics unchanged
    np.testing.assert_array_equal(as_float[1], std)


def test_prefetcher_makes_keys_in_order_restarts_elsewhere_and_raises_in_the_caller():
    made = []

    def produce(key):
        made.append(key)
        if key == 9:
            raise ValueError("batch 9 is broken")
        return {"key": key}

    prefetcher = streaming.Prefetcher(produce, stride=3, stop=12, depth=2)
    try:
        assert [prefetcher.get(key)["key"] for key in (0, 3, 6)] == [0, 3, 6]
        assert prefetcher.get(3)["key"] == 3  # a resumed or repeated call starts over there
        assert prefetcher.get(6)["key"] == 6
        with pytest.raises(ValueError, match="batch 9 is broken"):
            prefetcher.get(9)
        assert prefetcher.get(0)["key"] == 0  # usable again after the error
    finally:
        prefetcher.close()
    assert set(made) <= {0, 3, 6, 9}  # never at or past `stop`, always on the stride


def test_a_grain_run_that_fails_leaves_no_shared_memory_behind(tmp_path):
    """A Grain launch that stops with an error (here it diverges at once) ends with its one
    sentence and without Python's warning of "leaked shared_memory objects": its workers stop
    as Grain asks, unlinking the batches they had made, instead of being killed with them."""
    data_dir = str(tmp_path / "array_record")
    datasets.Mnist1d(data_dir=data_dir, file_format="array_record").download_and_prepare()
    result = helpers.launch(
        f"--config={MLP_CONFIG}", f"--workdir={tmp_path / 'run'}", f"--config.data_dir={data_dir}",
        "--config.input_pipeline=grain", "--config.learning_rate=1e9",
        "--config.num_train_steps=40", "--config.log_every_steps=20",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert "became NaN or infinite" in result.stderr, result.stderr[-3000:]
    assert "leaked shared_memory" not in result.stderr, result.stderr[-3000:]
