"""The image classification models' building blocks against Flax's reference ops."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.image_classification.models.cnn import max_pool


@pytest.mark.parametrize(
    "shape, window",
    [((3, 40, 5), (2,)), ((3, 41, 5), (2,)), ((2, 28, 28, 4), (2, 2)), ((2, 9, 7, 3), (3, 2))],
)
def test_max_pool_equals_flax_max_pool_in_value_and_gradient(shape, window):
    inputs = jax.random.normal(jax.random.key(0), shape)
    cotangent = jax.random.normal(jax.random.key(1), nn.max_pool(inputs, window, window).shape)

    def ours(x):
        return (max_pool(x, window) * cotangent).sum()

    def flax(x):
        return (nn.max_pool(x, window, window) * cotangent).sum()

    np.testing.assert_array_equal(max_pool(inputs, window), nn.max_pool(inputs, window, window))
    # Random normal inputs have no ties, so both gradients route each cotangent to the one
    # maximum of its window.
    np.testing.assert_array_equal(jax.grad(ours)(inputs), jax.grad(flax)(inputs))


def test_resnet_widths_equal_the_doubling_width_and_refuse_a_wrong_count():
    from experiments.image_classification.models.resnet import ResNet

    images = np.zeros((2, 8, 8, 1), np.float32)

    def shapes(model):  # traced, not compiled
        init = lambda x: model.init(jax.random.key(0), x, train=False)
        return jax.tree.map(np.shape, jax.eval_shape(init, images))

    doubling = shapes(ResNet(10, stage_sizes=(1, 1), width=4))
    assert doubling == shapes(ResNet(10, stage_sizes=(1, 1), widths=(4, 8)))
    assert doubling != shapes(ResNet(10, stage_sizes=(1, 1), widths=(4, 6)))
    with pytest.raises(ValueError, match="one width per stage"):
        shapes(ResNet(10, stage_sizes=(1, 1), widths=(4,)))


def test_resnet_stem_strides_2_is_a_strided_convolution_at_half_the_size():
    from experiments.image_classification.models.resnet import ResNet

    images = jax.random.normal(jax.random.key(4), (2, 8, 8, 1))
    for strides, size in ((1, 8), (2, 4)):
        model = ResNet(5, stage_sizes=(1,), width=4, stem_strides=strides)
        variables = model.init(jax.random.key(0), images, train=False)
        _, captured = model.apply(
            variables, images, train=False, capture_intermediates=True, mutable=["intermediates"]
        )  # fmt: skip
        (stem,) = captured["intermediates"]["Conv_0"]["__call__"]
        reference = jax.lax.conv_general_dilated(
            images, variables["params"]["Conv_0"]["kernel"], (strides, strides), "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )  # fmt: skip
        assert stem.shape == (2, size, size, 4)
        np.testing.assert_allclose(stem, reference, rtol=1e-6, atol=1e-6)


def test_resnet_mirror_average_is_the_mean_of_the_image_and_its_mirror_in_evaluation_only():
    from experiments.image_classification.models.resnet import ResNet

    images = jax.random.normal(jax.random.key(2), (3, 6, 6, 1))
    plain = ResNet(5, stage_sizes=(1,), width=2)
    averaged = ResNet(5, stage_sizes=(1,), width=2, mirror_average=True)
    variables = jax.jit(lambda x: plain.init(jax.random.key(0), x, train=False))(images)

    def apply(model, x, train):
        mutable = ["batch_stats"] if train else False
        return jax.jit(lambda v, x: model.apply(v, x, train=train, mutable=mutable))(variables, x)

    both = apply(plain, jnp.concatenate([images, images[:, :, ::-1]]), False)
    np.testing.assert_allclose(apply(averaged, images, False), (both[:3] + both[3:]) / 2, rtol=1e-6)
    # Training sees the images as given: the same logits and batch statistics as the plain model.
    jax.tree.map(
        np.testing.assert_array_equal, apply(plain, images, True), apply(averaged, images, True)
    )


def test_resnet_shift_average_is_the_mean_over_one_pixel_shifts_and_mirrors():
    """Ten views: the image and its mirror, each as given and moved one pixel each way
    (written here with numpy's roll and a zeroed edge), in evaluation only."""
    from experiments.image_classification.models.resnet import ResNet

    images = np.asarray(jax.random.normal(jax.random.key(2), (3, 6, 6, 1)))
    plain = ResNet(5, stage_sizes=(1,), width=2)
    averaged = ResNet(5, stage_sizes=(1,), width=2, mirror_average=True, shift_average=True)
    variables = jax.jit(lambda x: plain.init(jax.random.key(0), x, train=False))(images)

    def moved(x, axis, step):
        out = np.roll(x, step, axis)
        edge = [slice(None)] * 4
        edge[axis] = 0 if step > 0 else -1
        out[tuple(edge)] = 0
        return out

    views = []
    for x in (images, images[:, :, ::-1]):
        views += [x] + [moved(x, axis, step) for axis in (1, 2) for step in (1, -1)]
    logits = jax.jit(lambda v, x: plain.apply(v, x, train=False))(variables, np.concatenate(views))
    expected = np.asarray(logits).reshape(10, 3, 5).mean(0)
    result = jax.jit(lambda v, x: averaged.apply(v, x, train=False))(variables, images)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)
    train = jax.jit(lambda m, v, x: m.apply(v, x, train=True, mutable=["batch_stats"]),
                    static_argnums=0)  # fmt: skip
    jax.tree.map(
        np.testing.assert_array_equal, train(plain, variables, images),
        train(averaged, variables, images),
    )  # fmt: skip


def test_views_script_ten_view_average_is_the_models_shift_average():
    """benchmarks/test_time_views.py scores checkpoints with its own shifted views; its
    `mirror_5_shifts` row must be the figure the model's `shift_average` gives the trainer."""
    from benchmarks.test_time_views import AVERAGES, moved
    from experiments.image_classification.models.resnet import ResNet

    images = np.asarray(jax.random.normal(jax.random.key(3), (3, 6, 6, 1)))
    down, right = moved(images, 1, 0), moved(images, 0, -1)
    np.testing.assert_array_equal(down[:, 1:], images[:, :-1])  # content moves down ...
    np.testing.assert_array_equal(right[:, :, :-1], images[:, :, 1:])  # ... or left
    assert not down[:, 0].any() and not right[:, :, -1].any()  # zeros fill the edge left
    plain = ResNet(5, stage_sizes=(1,), width=2)
    averaged = ResNet(5, stage_sizes=(1,), width=2, mirror_average=True, shift_average=True)
    variables = jax.jit(lambda x: plain.init(jax.random.key(0), x, train=False))(images)
    apply = jax.jit(lambda x: plain.apply(variables, x, train=False))
    views = [
        apply(moved(images[:, :, ::-1] if mirrored else images, *offset))
        for offset, mirrored in AVERAGES["mirror_5_shifts"]
    ]  # fmt: skip
    expected = jax.jit(lambda x: averaged.apply(variables, x, train=False))(images)
    np.testing.assert_allclose(np.mean(views, axis=0), expected, rtol=1e-5, atol=1e-6)


def test_label_smoothing_loss_is_the_closed_form_and_zero_smoothing_is_plain_cross_entropy():
    from experiments.image_classification import task

    logits = np.random.default_rng(3).normal(size=(4, 6)).astype(np.float32)
    batch = {"label": np.array([0, 5, 2, 2], np.int32)}
    log_p = logits.astype(np.float64) - np.log(
        np.exp(logits.astype(np.float64)).sum(-1, keepdims=True)
    )
    s, k = 0.1, 6
    targets = np.full((4, 6), s / k)
    targets[np.arange(4), batch["label"]] += 1 - s
    losses, weights = task.loss(logits, batch, label_smoothing=s)
    np.testing.assert_allclose(losses, -(targets * log_p).sum(-1), rtol=1e-6)
    np.testing.assert_array_equal(weights, np.ones(4))
    plain, _ = task.loss(logits, batch)
    np.testing.assert_allclose(plain, -log_p[np.arange(4), batch["label"]], rtol=1e-6)
