"""The input pipeline changes how batches are made, never what is trained or exported: runs of
one config read into memory, streamed by Grain from ArrayRecord files and gathered on the
device export models that predict exactly alike."""

import os
from unittest import mock

import numpy as np

import experiments
from experiments.image_classification import task as image_task
from research.core import data
from research.deploy import inference
from tests import helpers
from tests.tiny_images import TinyImages

CONFIGS = os.path.join(helpers.REPO_ROOT, "experiments/image_classification/configs")
# Grain first: it writes TinyImages as ArrayRecord files, which the other two read whole.
PIPELINES = ("grain", "memory", "device")


def test_grain_and_device_resident_runs_export_and_predict_exactly_as_the_in_memory_run(
    tmp_path_factory, tmp_path
):
    """Each pipeline gives step `s` the same rows prepared the same way, so the three runs end
    with the same parameters bit for bit; the task's info (input statistics, raw shape,
    classes) does not depend on the pipeline, so the three exports answer alike."""
    settings = dict(
        dataset="tiny_images", data_dir=str(tmp_path / "data"), batch_size=32,
        eval_batch_size=50, num_train_steps=12, warmup_steps=2, log_every_steps=4,
        eval_every_steps=12, checkpoint_every_steps=12, input_workers=0,
        **{"model.hidden_sizes": (16,)},
    )  # fmt: skip
    runs = {pipeline: ("mnist1d_mlp.py", {"input_pipeline": pipeline}) for pipeline in PIPELINES}
    entry = (TinyImages, "image", ("test",), 10)
    with mock.patch.dict(image_task.DATASETS, {"tiny_images": entry}):
        trained = helpers.train_and_export(tmp_path_factory, runs, CONFIGS, **settings)
        infos = {p: image_task.load_data(config, "").info for p, (config, _) in trained.items()}
        raw = data.load_tfds_arrays("tiny_images", "test", settings["data_dir"], TinyImages)
        outputs, answers, signatures = {}, {}, {}
        for pipeline, (_, root) in trained.items():
            predictor = inference.Predictor(str(root / "model"), get_task=experiments.get_task)
            examples = [predictor.codec.parse(image) for image in raw["image"]]
            inputs = {"inputs": np.stack([example["inputs"] for example in examples])}
            outputs[pipeline] = predictor.model.run("predict", inputs)
            answers[pipeline] = predictor.predict(examples)
            signatures[pipeline] = predictor.signature

    assert infos["grain"] == infos["memory"] == infos["device"]
    assert infos["memory"]["original_classes"] == list(range(10))
    summaries = {p: (root / "run" / "summary.json").read_text() for p, (_, root) in trained.items()}
    hashes = {p: signature["params_sha256"] for p, signature in signatures.items()}
    assert hashes["grain"] == hashes["memory"] == hashes["device"]
    assert all(hashes[p] in summaries[p] for p in PIPELINES)  # the trained, not a fresh, model
    assert signatures["grain"]["metadata"] == signatures["memory"]["metadata"]
    assert signatures["device"]["metadata"] == signatures["memory"]["metadata"]
    for pipeline in ("grain", "device"):
        for name, values in outputs["memory"].items():
            np.testing.assert_array_equal(outputs[pipeline][name], values)
        assert answers[pipeline] == answers["memory"]
    assert len(answers["memory"]) == 50
