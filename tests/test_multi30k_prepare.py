"""The Multi30k prepare command: downloads the release, checks it, never leaves half a file."""

import gzip
import os
import pathlib
import shutil

import pytest

from experiments.seq2seq import multi30k
from tests import helpers
from tests.helpers import REPO_ROOT, subprocess_environment

LOCAL_RELEASE = pathlib.Path(REPO_ROOT).parent / "shared" / "data" / "multi30k"
FOLDER_CONFIG = os.path.join(
    REPO_ROOT, "experiments/seq2seq/configs/translate_folder_transformer.py"
)

needs_release = pytest.mark.skipif(
    not LOCAL_RELEASE.is_dir(), reason=f"no copy of the Multi30k release in {LOCAL_RELEASE}"
)


def _text(path: pathlib.Path) -> bytes:
    with gzip.open(path, "rb") as file:
        return file.read()


@needs_release
def test_prepare_downloads_every_split_through_a_url_and_keeps_intact_files(tmp_path):
    target = tmp_path / "multi30k"
    multi30k.prepare(str(target), LOCAL_RELEASE.as_uri())
    names = sorted(p.name for p in target.iterdir())
    expected = sorted(f"{s}.{lang}.gz" for s in multi30k.SPLIT_LINES for lang in ("de", "en"))
    assert names == sorted([*expected, multi30k.MANIFEST_FILE])
    for name in expected:
        assert _text(target / name) == _text(LOCAL_RELEASE / name)

    # A second run downloads nothing: the files are intact.
    modified = {name: (target / name).stat().st_mtime_ns for name in expected}
    multi30k.prepare(str(target), (tmp_path / "no_release_here").as_uri())
    assert modified == {name: (target / name).stat().st_mtime_ns for name in expected}


@needs_release
def test_a_damaged_download_is_refused_and_leaves_no_file(tmp_path):
    release = tmp_path / "release"
    shutil.copytree(LOCAL_RELEASE, release)
    os.chmod(release, 0o755)
    damaged = release / "val.en.gz"
    os.chmod(damaged, 0o644)
    damaged.write_bytes(damaged.read_bytes()[:5000])  # truncated mid-stream
    target = tmp_path / "multi30k"
    with pytest.raises(multi30k.PrepareError, match=r"val\.en\.gz is not an intact gzip file"):
        multi30k.prepare(str(target), release.as_uri())
    assert not (target / "val.en.gz").exists()
    assert not [p for p in target.iterdir() if p.name.endswith(".partial")]
    assert (target / "train.en.gz").exists()  # what was complete stays


def test_an_unreachable_release_is_one_sentence_naming_the_url(tmp_path):
    missing = (tmp_path / "nowhere").as_uri()
    result = helpers.run_module(
        "experiments.seq2seq.multi30k", f"--data_dir={tmp_path / 'm'}", f"--source_url={missing}"
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: Could not download " + missing)
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.endswith(".partial")]


def test_default_config_without_prepared_data_says_how_to_prepare_it(tmp_path):
    environment = subprocess_environment()
    environment["HOME"] = str(tmp_path)  # the default data_dir is under ~
    result = helpers.launch(
        f"--config={FOLDER_CONFIG}", f"--workdir={tmp_path / 'run'}", environment=environment
    )
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()[-1]
    expected_dir = tmp_path / "tensorflow_datasets" / "multi30k"
    assert f"python -m experiments.seq2seq.multi30k --data_dir={expected_dir}" in message
