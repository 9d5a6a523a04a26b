"""Seed 004's MLP: dense 128 -> 10; 101,770 parameters.

Seed 004 gave no accuracy (and no epochs or batch size).

    python launch.py --config=configs/mlp_128.py

Measured here: MEASURED
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.name = "mlp_128"
    config.model = ml_collections.ConfigDict({"name": "mlp", "hidden": (128,)})
    config.num_epochs = 10
    config.batch_size = 32
    config.schedule = "cosine"
    return config
