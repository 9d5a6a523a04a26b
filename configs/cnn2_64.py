"""Seed 003's first CNN: conv 64 valid, pool, conv 64 valid, pool, dense 128,
dropout 0.2 -> 10; 243,786 parameters.

Seed 003 reported no accuracy; it trained 50 epochs at batch 32 on an 80/20 split.

    python launch.py --config=configs/cnn2_64.py

Measured here (make reproduce, docs/RESULTS.md): test accuracy 0.9117 ± 0.0009 over seeds 0, 1, 2
after 6 epochs at batch 32; 3.8 min training per run on the 2-core AMD EPYC
family 23 model 1 (Zen/Zen+, AVX2), 2026-12-02.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.name = "cnn2_64"
    config.model = ml_collections.ConfigDict(
        {
            "name": "cnn",
            "conv_features": (64, 64),
            "padding": "VALID",
            "dense_features": (128,),
            "dense_dropout": 0.2,
        }
    )
    config.num_epochs = 6
    config.batch_size = 32
    config.validation_fraction = 0.2
    config.schedule = "cosine"
    return config
