"""Parallel corpora as {split: [(source, target), ...]} from plain-text folders or tfds WMT."""

from __future__ import annotations

import os
import pathlib

from research.core import data
from research.core.text import read_lines

Pair = tuple[str, str]

# File stems that name a split; every stem starting with "test" is a test split of its own.
FOLDER_SPLITS = {"train": "train", "val": "valid"}
TFDS_SPLITS = {"train": "train", "validation": "valid", "test": "test"}
WMT_DATASETS = ("wmt14_translate/de-en", "wmt17_translate/de-en")
# Examples per batch when reading tfds; large batches keep the per-example Python cost low.
_TFDS_READ_BATCH_SIZE = 4096


def _language_files(folder: pathlib.Path, language: str) -> dict[str, pathlib.Path]:
    """{stem: path} of the split files `<stem>.<language>` or `<stem>.<language>.gz`."""
    files: dict[str, pathlib.Path] = {}
    for path in sorted(folder.iterdir()):
        name = path.name.removesuffix(".gz")
        stem, _, suffix = name.rpartition(".")
        if suffix != language or not (stem in FOLDER_SPLITS or stem.startswith("test")):
            continue
        if stem in files:
            raise ValueError(
                f"{folder} holds both {files[stem].name} and {path.name}; keep only one of them."
            )
        files[stem] = path
    return files


def read_parallel_folder(
    folder: str | os.PathLike, source_language: str, target_language: str
) -> dict[str, list[Pair]]:
    """Pairs from train.<lang>, val.<lang> and test*.<lang> files (optionally .gz), one a line.

    Returns splits "train", "valid" (when val files exist) and one per test file stem, e.g.
    "test_2016_flickr". Val and test files present for only one of the two languages are skipped.
    """
    folder = pathlib.Path(folder)
    wanted = [f"train.{source_language}[.gz]", f"train.{target_language}[.gz]"]
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Parallel corpus folder {folder} does not exist; prepare Multi30k there with "
            f"`python -m experiments.seq2seq.multi30k --data_dir={folder}`, or set "
            f"--config.data_dir to a folder holding {' and '.join(wanted)}."
        )
    source_files = _language_files(folder, source_language)
    target_files = _language_files(folder, target_language)
    if "train" not in source_files or "train" not in target_files:
        raise FileNotFoundError(
            f"Parallel corpus folder {folder} lacks {' and/or '.join(wanted)}; put the training "
            "files there, one sentence a line, or check the language codes."
        )
    splits: dict[str, list[Pair]] = {}
    test_stems = sorted(stem for stem in source_files if stem.startswith("test"))
    for stem in ["train", "val", *test_stems]:
        if stem not in source_files or stem not in target_files:
            continue
        sources = read_lines(source_files[stem], "remove that line from both sides")
        targets = read_lines(target_files[stem], "remove that line from both sides")
        if not sources:
            raise ValueError(
                f"{source_files[stem]} is empty; put one sentence a line in it, or remove the "
                f"{stem} files of both languages."
            )
        if len(sources) != len(targets):
            raise ValueError(
                f"{source_files[stem]} has {len(sources)} lines but {target_files[stem]} has "
                f"{len(targets)}; the two sides of a parallel corpus must align line by line."
            )
        splits[FOLDER_SPLITS.get(stem, stem)] = list(zip(sources, targets, strict=True))
    return splits


def read_wmt(
    name: str,
    data_dir: str | os.PathLike | None,
    source_language: str,
    target_language: str,
) -> dict[str, list[Pair]]:
    """Pairs of a prepared tfds translation dataset such as wmt14_translate/de-en.

    Returns splits "train", "valid" and "test" (tfds train, validation and test).
    """
    import tensorflow_datasets as tfds

    data.import_tensorflow()  # here: folder corpora and SCAN never pay for loading it

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise ValueError(
            f"Unknown tfds dataset {name!r}; use one of {', '.join(WMT_DATASETS)}."
        ) from error
    languages = list(builder.info.features.keys())
    for language in (source_language, target_language):
        if language not in languages:
            raise ValueError(
                f"{name} has no language {language!r}; choose from {', '.join(languages)}."
            )
    splits: dict[str, list[Pair]] = {}
    for tfds_split, split in TFDS_SPLITS.items():
        try:
            dataset = builder.as_dataset(split=tfds_split).batch(_TFDS_READ_BATCH_SIZE)
        except AssertionError as error:  # tfds's "dataset not prepared"
            root = data_dir if data_dir is not None else "~/tensorflow_datasets"
            raise FileNotFoundError(
                f"The tfds dataset {name} is not prepared in {root}; prepare it on a machine "
                f"with internet access with `tfds build {name} --data_dir={root}` and copy that "
                f"directory to {root}."
            ) from error
        pairs: list[Pair] = []
        for batch in tfds.as_numpy(dataset):
            sources = [text.decode("utf-8") for text in batch[source_language]]
            targets = [text.decode("utf-8") for text in batch[target_language]]
            pairs.extend(zip(sources, targets, strict=True))
        splits[split] = pairs
    return splits
