"""What tests share: configs and runs, launching as a user does, golden curves, small data."""

import gzip
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(config_path: str, **overrides) -> ml_collections.ConfigDict:
    """The config of `experiments/.../configs/<name>.py` with `overrides` applied."""
    spec = importlib.util.spec_from_file_location("config_under_test", config_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = tuple(value) if isinstance(value, list) else value  # lists from JSON
    return config


def run_experiment(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains in this process (one CPU device) and returns the summary."""
    import experiments
    from research.core import trainer

    return trainer.train_and_evaluate(config, str(workdir), experiments.get_task(config))


GOLDEN_DIR = Path(__file__).parent / "golden"
# Same machine and versions: bit-identical. Other CPUs or XLA versions may reorder float
# reductions, so the goldens allow a small relative difference.
GOLDEN_RELATIVE_TOLERANCE = 1e-4
GOLDEN_METRICS = ("loss", "accuracy", "mse", "r2", "token_accuracy", "exact_match", "bleu")


def check_golden(name: str, workdir) -> None:
    """The run's metric curves (train and eval) equal the golden ones stored under `name`.

    After an intended change of results: `REGENERATE_GOLDENS=1 .venv/bin/python -m pytest`.
    """
    from research.runtime import workdir as workdir_lib

    curve = [
        {k: r[k] for k in ("step", "split", *GOLDEN_METRICS) if k in r}
        for r in workdir_lib.read_metrics(workdir)
    ]
    path = GOLDEN_DIR / (name.replace("/configs/", "__").removesuffix(".py") + ".json")
    if os.environ.get("REGENERATE_GOLDENS"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(curve, indent=1) + "\n")
    golden = json.loads(path.read_text())
    assert [(r["step"], r["split"]) for r in curve] == [(r["step"], r["split"]) for r in golden]
    for record, expected in zip(curve, golden, strict=True):
        for metric in GOLDEN_METRICS:
            if metric in expected:
                assert record[metric] == pytest.approx(
                    expected[metric], rel=GOLDEN_RELATIVE_TOLERANCE, abs=1e-7
                ), (record["step"], record["split"], metric)


def launch_command(*arguments: str) -> list[str]:
    return [sys.executable, os.path.join(REPO_ROOT, "launch.py"), *arguments]


def subprocess_environment(device_count: int = 1) -> dict[str, str]:
    """The environment for a child process with `device_count` simulated CPU devices."""
    environment = dict(os.environ)
    environment["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={device_count}"
    environment["PYTHONPATH"] = REPO_ROOT
    environment["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return environment


# German -> English word by word, so a tiny model has something learnable.
LEXICON = {
    "ein": "a", "hund": "dog", "katze": "cat", "mann": "man", "frau": "woman", "kind": "child",
    "läuft": "runs", "schläft": "sleeps", "spielt": "plays", "liest": "reads", "im": "in the",
    "park": "park", "haus": "house", "garten": "garden", "und": "and", "mit": "with",
    "roten": "red", "großen": "big", "kleinen": "small", "ball": "ball",
}  # fmt: skip

# The Multi30k file layout, one sentence a line.
FOLDER_SPLITS = ("train", "val", "test_2016_flickr", "test_2017_flickr")


def sentence_pairs(count: int, seed: int, max_words: int = 14) -> list[tuple[str, str]]:
    """`count` (German, English) pairs of 1..max_words words, lengths spread evenly."""
    rng = np.random.default_rng(seed)
    words = list(LEXICON)
    pairs = []
    for _ in range(count):
        german = [words[i] for i in rng.integers(0, len(words), rng.integers(1, max_words + 1))]
        pairs.append((" ".join(german), " ".join(LEXICON[word] for word in german)))
    return pairs


def write_parallel_folder(
    folder: pathlib.Path, sizes=(96, 16, 12, 12), source: str = "de", target: str = "en"
) -> pathlib.Path:
    """A folder like Multi30k's: `<split>.<language>` files (test files gzipped)."""
    folder.mkdir(parents=True, exist_ok=True)
    for number, (split, size) in enumerate(zip(FOLDER_SPLITS, sizes, strict=True)):
        pairs = sentence_pairs(size, seed=number)
        for language, side in ((source, 0), (target, 1)):
            text = "".join(pair[side] + "\n" for pair in pairs)
            path = folder / f"{split}.{language}"
            if split.startswith("test"):
                with gzip.open(f"{path}.gz", "wt", encoding="utf-8") as file:
                    file.write(text)
            else:
                path.write_text(text, encoding="utf-8")
    return folder


# Hand-written Chinese-English pairs for tokenizer and BLEU checks on a non-Latin script.
CHINESE_ENGLISH = [
    ("我喜欢猫。", "I like cats."),
    ("他在公园里跑步。", "He runs in the park."),
    ("今天天气很好。", "The weather is nice today."),
    ("我们一起吃饭吧。", "Let's eat together."),
    ("这本书很有意思。", "This book is interesting."),
    ("她每天早上喝咖啡。", "She drinks coffee every morning."),
    ("孩子们在学校学习。", "The children study at school."),
    ("我的朋友住在北京。", "My friend lives in Beijing."),
    ("请把门关上。", "Please close the door."),
    ("火车八点出发。", "The train leaves at eight."),
    ("他买了一辆红色的自行车。", "He bought a red bicycle."),
    ("明天我们去海边。", "Tomorrow we go to the beach."),
]


def write_chinese_english_folder(folder: pathlib.Path, repeats: int = 4) -> pathlib.Path:
    """train (the pairs repeated), val and test_2016_flickr files for `zh` and `en`."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = {
        "train": CHINESE_ENGLISH * repeats,
        "val": CHINESE_ENGLISH[:6],
        "test_2016_flickr": CHINESE_ENGLISH[6:],
    }
    for split, pairs in splits.items():
        for language, side in (("zh", 0), ("en", 1)):
            text = "".join(pair[side] + "\n" for pair in pairs)
            (folder / f"{split}.{language}").write_text(text, encoding="utf-8")
    return folder


def run_command(command: list[str], devices: int = 1, environment=None, timeout: int = 300):
    """Runs `command` from the repository with `devices` simulated CPU devices."""
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=environment or subprocess_environment(devices),
        cwd=REPO_ROOT,
        timeout=timeout,
    )


def launch(*arguments: str, devices: int = 1, environment=None, timeout: int = 300):
    """`python launch.py ARGUMENTS` as a user runs it; returns the completed process."""
    return run_command(launch_command(*arguments), devices, environment, timeout)


def run_module(module: str, *arguments: str, devices: int = 1, timeout: int = 300):
    """`python -m MODULE ARGUMENTS` (a test runner such as tests.fault_runner)."""
    return run_command([sys.executable, "-m", module, *arguments], devices, timeout=timeout)


def train_and_export(tmp_path_factory, runs: dict, configs_dir: str, **settings) -> dict:
    """Per task of `runs` ({task: (config path, overrides)}): a tiny run trained and exported,
    as (config, root) with the run in `root / "run"` and the model in `root / "model"`."""
    import experiments
    from research.deploy import export

    results = {}
    for task_name, (path, overrides) in runs.items():
        root = tmp_path_factory.mktemp(task_name)
        config = load_config(os.path.join(configs_dir, path), **settings, **overrides)
        run_experiment(config, root / "run")
        export.export_run(str(root / "run"), str(root / "model"), get_task=experiments.get_task)
        results[task_name] = (config, root)
    return results
