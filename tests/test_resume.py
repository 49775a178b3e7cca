"""A run killed mid-way and restarted ends with the parameters of an uninterrupted run."""

import json
import os

import pytest

from research.runtime import workdir as workdir_lib
from tests import helpers
from tests.helpers import REPO_ROOT, load_config, run_experiment

SCHEDULE = {
    "num_train_steps": 90,
    "warmup_steps": 10,
    "log_every_steps": 10,
    "eval_every_steps": 30,
    "checkpoint_every_steps": 20,
}
CASES = {
    # With moving averages of the weights: they are part of the state a checkpoint keeps, and
    # the final evaluation (which uses them) must match too.
    "image_classification": (
        "experiments/image_classification/configs/mnist1d_cnn.py",
        {"batch_size": 32, "ema_decay": 0.9},
    ),
    # Length-bucketed batches of a tiny Transformer: the batch at each step, its shape
    # included, is a function of (seed, step) alone.
    "bucketed_translation": (
        "experiments/seq2seq/configs/translate_folder_transformer.py",
        {
            "batch_size": 16,
            "eval_batch_size": 32,
            "tokenizer.type": "word",
            "bucket_boundaries": (16,),  # two shapes: 16 and the full 32
            "max_input_length": 32,
            "max_target_length": 32,
            "model.num_layers": 1,
            "model.width": 32,
            "model.num_heads": 2,
            "model.mlp_width": 64,
            "model.max_length": 32,
            "model.share_embeddings": False,
            "decode.max_length": 32,
            "decode.beam_size": 1,
            "eval_splits": ("valid",),  # the test splits would add compilations, not checks
        },
    ),
}
KILL_AT_STEP = 53


@pytest.mark.parametrize("case", sorted(CASES))
def test_killed_and_restarted_run_matches_uninterrupted_run(case, data_dir, tmp_path):
    path, overrides = CASES[case]
    config_path = os.path.join(REPO_ROOT, path)
    overrides = {**SCHEDULE, **overrides}
    if case == "bucketed_translation":
        data_dir = str(helpers.write_parallel_folder(tmp_path / "corpus", sizes=(400, 16, 12, 12)))
    config = load_config(config_path, **overrides)
    config.data_dir = data_dir
    uninterrupted = run_experiment(config, tmp_path / "uninterrupted")

    workdir = tmp_path / "interrupted"
    # Dies like `kill -9` (no clean-up, checkpoint writes cut off) at the batch of that step.
    died = helpers.run_module(
        "tests.fault_runner", config_path, json.dumps(overrides), data_dir, str(workdir),
        "kill_in_training", str(KILL_AT_STEP),
    )  # fmt: skip
    assert died.returncode == 137, died.stderr[-3000:]
    assert not (workdir / workdir_lib.SUMMARY_FILE).exists()
    saved = [int(n) for n in os.listdir(workdir / workdir_lib.CHECKPOINT_DIR) if n.isdigit()]
    assert max(saved) <= 40  # the restart has steps to redo

    resumed = run_experiment(config, workdir)
    assert resumed["params_sha256"] == uninterrupted["params_sha256"]
    split = "test" if case == "image_classification" else "valid"
    assert resumed[split] == uninterrupted[split]
    # The metrics of the lost steps were written again, not twice.
    records = [(r["step"], r["split"]) for r in workdir_lib.read_metrics(workdir)]
    expected = [
        (r["step"], r["split"]) for r in workdir_lib.read_metrics(tmp_path / "uninterrupted")
    ]
    assert records == expected
