"""Shared fixtures; the helpers tests import live in tests/helpers.py."""

import pytest


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """One tfds data dir for the session, so each embedded dataset is generated once."""
    return str(tmp_path_factory.mktemp("tensorflow_datasets"))
