import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import importlib

import pytest

from fmnist_jax import input_pipeline


def load_config(name):
    """A fresh copy of configs/<name>.py's config (tests import this one loader)."""
    return importlib.import_module(f"configs.{name}").get_config()


@pytest.fixture(scope="session")
def splits() -> dict[str, input_pipeline.Split]:
    """The real prepared dataset with the default 10% validation carve."""
    return input_pipeline.load_splits(validation_fraction=0.1, split_seed=0)
