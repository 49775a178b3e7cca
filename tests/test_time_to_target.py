"""The benchmark tool that reads time to target from a run's metrics.jsonl."""

from benchmarks.time_to_target import time_to_target

RECORDS = [
    {"step": 100, "split": "train", "loss": 0.5, "accuracy": 0.99, "elapsed_s": 3.0},
    {"step": 100, "split": "test", "loss": 0.7, "accuracy": 0.90, "elapsed_s": 4.0},
    {"step": 200, "split": "test", "loss": 0.4, "accuracy": 0.95, "elapsed_s": 8.0},
    {"step": 300, "split": "test", "loss": 0.3, "accuracy": 0.97, "elapsed_s": 12.0},
]


def test_first_evaluation_of_the_split_that_reaches_the_target():
    assert time_to_target(RECORDS, "accuracy", 0.94, "test") == {
        "step": 200,
        "accuracy": 0.95,
        "elapsed_s": 8.0,
    }
    assert time_to_target(RECORDS, "loss", 0.35, "test", lower_is_better=True)["step"] == 300
    assert time_to_target(RECORDS, "accuracy", 0.98, "test") is None
