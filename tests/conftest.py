import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from fmnist_jax import input_pipeline


@pytest.fixture(scope="session")
def splits() -> dict[str, input_pipeline.Split]:
    """The real prepared dataset with the default 10% validation carve."""
    return input_pipeline.load_splits(validation_fraction=0.1, split_seed=0)
