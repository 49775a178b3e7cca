"""Prepares Multi30k (task 1, raw German and English) from its public release into a folder.

    python -m experiments.seq2seq.multi30k [--data_dir=~/tensorflow_datasets/multi30k]

Each file is downloaded to a temporary name, checked (gzip integrity and the published number
of lines) and only then renamed into place, so an interrupted or failed download never leaves
a file the reader would take for data. Files already present and intact are kept.
"""

import gzip
import hashlib
import json
import os
import pathlib
import sys
import tempfile
import urllib.request

from absl import app, flags

from research.errors import UserError

RELEASE_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"
DEFAULT_DIR = "~/tensorflow_datasets/multi30k"
LANGUAGES = ("de", "en")
# Sentences per split, as the release's README states them.
SPLIT_LINES = {"train": 29000, "val": 1014, "test_2016_flickr": 1000, "test_2017_flickr": 1000}
MANIFEST_FILE = "manifest.json"

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", DEFAULT_DIR, "Folder to prepare Multi30k in.")
flags.DEFINE_string("source_url", RELEASE_URL, "Where the release's .gz files are (http or file).")


class PrepareError(UserError, RuntimeError):
    """A download that cannot be completed; the message names the file and what to do."""


def _line_count(path: pathlib.Path) -> int:
    """Lines of a gzip file; reading it to the end checks its CRC."""
    with gzip.open(path, "rb") as file:
        return sum(1 for _ in file)


def _intact(path: pathlib.Path, lines: int) -> bool:
    try:
        return _line_count(path) == lines
    except (OSError, EOFError):  # truncated or not gzip
        return False


def _download(url: str, destination: pathlib.Path, lines: int) -> None:
    """`url` into `destination`, renamed into place only after the check passed."""
    with tempfile.NamedTemporaryFile(
        dir=destination.parent, prefix=f".{destination.name}.", suffix=".partial", delete=False
    ) as partial:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                while chunk := response.read(1 << 16):
                    partial.write(chunk)
        except OSError as error:
            os.unlink(partial.name)
            raise PrepareError(
                f"Could not download {url} ({error}); check the network or pass --source_url "
                "pointing at a copy of the release."
            ) from error
    if not _intact(pathlib.Path(partial.name), lines):
        os.unlink(partial.name)
        raise PrepareError(
            f"{url} is not an intact gzip file of {lines} lines; the download was damaged or "
            "the release changed. Nothing was written for it; run the command again."
        )
    os.replace(partial.name, destination)


def prepare(data_dir: str, source_url: str = RELEASE_URL) -> pathlib.Path:
    """Downloads the splits of `SPLIT_LINES` for German and English into `data_dir`."""
    folder = pathlib.Path(os.path.expanduser(data_dir))
    if folder.exists() and not folder.is_dir():
        raise PrepareError(f"--data_dir={data_dir} is a file; pass a folder path.")
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for split, lines in SPLIT_LINES.items():
        for language in LANGUAGES:
            name = f"{split}.{language}.gz"
            path = folder / name
            if _intact(path, lines):
                print(f"{path}: present")
            else:
                _download(f"{source_url.rstrip('/')}/{name}", path, lines)
                print(f"{path}: downloaded")
            manifest[name] = {
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "lines": lines,
            }
    record = {"source_url": source_url, "files": manifest}
    (folder / MANIFEST_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return folder


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    try:
        folder = prepare(FLAGS.data_dir, FLAGS.source_url)
    except PrepareError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(
        f"Multi30k is ready in {folder}; train on it with python launch.py "
        "--config=experiments/seq2seq/configs/translate_folder_transformer.py"
        + ("" if FLAGS.data_dir == DEFAULT_DIR else f" --config.data_dir={FLAGS.data_dir}")
    )


if __name__ == "__main__":
    app.run(main)
