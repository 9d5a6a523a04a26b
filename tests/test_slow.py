"""Long runs (`make test-all` only): default configs reach their seed's test accuracy.

Fast siblings: tests/test_train.py::test_short_real_mlp_256_run trains the same code
path for two epochs; tests/test_checkpointing.py covers resume end to end.
"""

import pytest
from conftest import load_config

from fmnist_jax import train

SEED_ACCURACY = {"mlp_256": 0.8777, "mlp_4x2": 0.80}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SEED_ACCURACY))
def test_default_config_beats_its_seed(name, tmp_path):
    config = load_config(name)
    results = train.train_and_evaluate(config, str(tmp_path))
    assert results["test"]["accuracy"] > SEED_ACCURACY[name]
