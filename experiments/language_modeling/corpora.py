"""Plain-text corpora as {split: [line, ...]}, and the commands that prepare the embedded ones.

`python -m experiments.language_modeling.corpora prepare_kjv --out_dir=DIR` writes the King
James Bible (Debian's `bible-kjv-text`), `prepare_fortunes` the fortune cookies (`fortunes`).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import tempfile

from research.core.text import read_lines

SPLITS = ("train", "valid", "test")
DEFAULT_ROOT = "~/tensorflow_datasets/language_modeling"
KJV_DIR = f"{DEFAULT_ROOT}/kjv"
FORTUNES_DIR = f"{DEFAULT_ROOT}/fortunes"
DEBIAN_FORTUNES_DIR = "/usr/share/games/fortunes"
# Every 20th chapter (or fortune) is validation and the next one test: 5% each, spread over
# the whole corpus so that no book or topic is held out as a block.
HELD_OUT_PERIOD = 20


def _split_of(index: int) -> str:
    return {HELD_OUT_PERIOD - 2: "valid", HELD_OUT_PERIOD - 1: "test"}.get(
        index % HELD_OUT_PERIOD, "train"
    )


def read_text_folder(folder: str | os.PathLike, splits=SPLITS) -> dict[str, list[str]]:
    """{split: lines} from `<split>.txt` or `<split>.txt.gz` in `folder`, one document a line."""
    folder = pathlib.Path(os.path.expanduser(folder))
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Text corpus folder {folder} does not exist; prepare the default corpus with "
            f"`python -m experiments.language_modeling.corpora prepare_kjv --out_dir={folder}`, "
            "or set --config.data_dir to a folder holding train.txt, valid.txt and test.txt."
        )
    result = {}
    for split in splits:
        candidates = [folder / f"{split}.txt", folder / f"{split}.txt.gz"]
        found = [path for path in candidates if path.exists()]
        if len(found) != 1:
            problem = "holds both" if found else "lacks"
            raise FileNotFoundError(
                f"{folder} {problem} {split}.txt and {split}.txt.gz; keep exactly one of them "
                "(plain text, one document or sentence a line)."
            )
        lines = read_lines(found[0])
        if not any(lines):
            raise ValueError(f"{found[0]} is empty; put text in it, one document a line.")
        result[split] = lines
    return result


def _write_splits(splits: dict[str, list[str]], out_dir: str) -> dict[str, int]:
    """Writes `<split>.txt` files atomically (a folder renamed into place); returns bytes each."""
    out_dir = os.path.expanduser(out_dir)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    sizes = {}
    with tempfile.TemporaryDirectory(dir=parent, prefix=".incoming-") as incoming:
        for split, lines in splits.items():
            text = "".join(line + "\n" for line in lines)
            pathlib.Path(incoming, f"{split}.txt").write_text(text, encoding="utf-8")
            sizes[split] = len(text.encode("utf-8"))
        os.chmod(incoming, 0o755)  # TemporaryDirectory makes it private
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)
        os.replace(incoming, out_dir)
        os.makedirs(incoming)  # TemporaryDirectory removes it again
    return sizes


def kjv_verses(bible_program: str = "bible") -> list[tuple[str, str]]:
    """(reference such as "Ge1:1", text) of all 31,102 verses, read by Debian's `bible`."""
    if shutil.which(bible_program) is None:
        raise FileNotFoundError(
            f"The program '{bible_program}' that reads the King James Bible is not installed; "
            "install it with `apt-get install -y bible-kjv bible-kjv-text`."
        )
    output = subprocess.run(
        [bible_program, "-f", "gen1:1-rev22:21"], capture_output=True, text=True, check=True
    ).stdout
    verses = []
    for line in output.splitlines():
        reference, _, text = line.partition(" ")
        verses.append((reference, text.strip()))
    return verses


def prepare_kjv(out_dir: str = KJV_DIR, bible_program: str = "bible") -> dict[str, int]:
    """One verse a line; chapters 18 and 19 of every 20 (in canonical order) are valid and test."""
    splits: dict[str, list[str]] = {split: [] for split in SPLITS}
    chapter_index, last_chapter = -1, None
    for reference, text in kjv_verses(bible_program):
        chapter = reference.split(":")[0]
        if chapter != last_chapter:
            chapter_index, last_chapter = chapter_index + 1, chapter
        splits[_split_of(chapter_index)].append(text)
    return _write_splits(splits, out_dir)


def fortunes(fortunes_dir: str = DEBIAN_FORTUNES_DIR) -> list[list[str]]:
    """Every fortune (its lines) of the plain-text files in `fortunes_dir`, files sorted by name."""
    folder = pathlib.Path(fortunes_dir)
    files = sorted(
        path
        for path in folder.glob("*")
        if path.is_file() and not path.is_symlink() and "." not in path.name
    ) if folder.is_dir() else []  # fmt: skip
    if not files:
        raise FileNotFoundError(
            f"No fortune files in {fortunes_dir}; install them with "
            "`apt-get install -y fortunes` or pass --fortunes_dir."
        )
    result = []
    for path in files:
        text = path.read_bytes().decode("utf-8", errors="replace")
        for fortune in text.split("\n%\n"):
            lines = [line.rstrip() for line in fortune.strip("\n%").split("\n")]
            if any(lines):
                result.append(lines)
    return result


def prepare_fortunes(
    out_dir: str = FORTUNES_DIR, fortunes_dir: str = DEBIAN_FORTUNES_DIR
) -> dict[str, int]:
    """Fortune lines, each fortune then a `%` line; fortunes 18 and 19 of every 20 held out."""
    splits: dict[str, list[str]] = {split: [] for split in SPLITS}
    for index, lines in enumerate(fortunes(fortunes_dir)):
        splits[_split_of(index)].extend([*lines, "%"])
    return _write_splits(splits, out_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    kjv = commands.add_parser("prepare_kjv", help="The King James Bible, one verse a line.")
    kjv.add_argument("--out_dir", default=KJV_DIR, help="Folder to write the splits into.")
    kjv.add_argument("--bible_program", default="bible", help="Debian's reader of bible.data.")
    cookies = commands.add_parser("prepare_fortunes", help="Debian's fortune cookies.")
    cookies.add_argument("--out_dir", default=FORTUNES_DIR, help="Folder to write the splits into.")
    cookies.add_argument("--fortunes_dir", default=DEBIAN_FORTUNES_DIR, help="Fortune files.")
    arguments = parser.parse_args()
    try:
        if arguments.command == "prepare_kjv":
            sizes = prepare_kjv(arguments.out_dir, arguments.bible_program)
        else:
            sizes = prepare_fortunes(arguments.out_dir, arguments.fortunes_dir)
    except FileNotFoundError as error:
        raise SystemExit(f"error: {error}") from None
    described = ", ".join(f"{split} {size:,} bytes" for split, size in sizes.items())
    print(f"Wrote {arguments.out_dir}: {described}.")


if __name__ == "__main__":
    main()
