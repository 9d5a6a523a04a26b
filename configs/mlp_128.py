"""Seed 004's MLP: dense 128 -> 10; 101,770 parameters.

Seed 004 gave no accuracy (and no epochs or batch size).

    python launch.py --config=configs/mlp_128.py

Measured here: test accuracy 0.8898 after 10 epochs at batch 32;
23 s training, 41 s wall, on a 2-core AMD EPYC CPU (2026-11-22, runs/mlp_128/results.json;
other jobs shared the two cores, so times are upper bounds).
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
