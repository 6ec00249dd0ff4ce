"""Shared fixtures: the small embedded dataset, prepared once per test session."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # pylint: disable=g-import-not-at-top

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def shapes_data_dir(tmp_path_factory):
  """A TFDS data dir holding the prepared `shapes_small` dataset."""
  import datasets  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  datasets.get_dataset_info("shapes_small", data_dir)  # Prepares it on first use.
  return data_dir
