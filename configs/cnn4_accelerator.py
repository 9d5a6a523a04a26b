"""cnn4 for GPUs and TPUs: bfloat16 compute, a larger global batch, the rate scaled to it.

The same network as configs/cnn4.py. The global batch of 1,024 is split over all
devices (8 chips: 128 each); Adam's peak rate follows the square-root rule from
cnn4's 2e-3 at batch 128, with a two-epoch warmup (see README, "Scaling plan").

    python launch.py --config=configs/cnn4_accelerator.py

Measured here: not yet run on an accelerator; no accuracy or time is claimed for it.
"""

import ml_collections

from configs import cnn4


def get_config() -> ml_collections.ConfigDict:
    config = cnn4.get_config()
    config.name = "cnn4_accelerator"
    config.compute_dtype = "bfloat16"
    config.batch_size = 1024
    config.learning_rate = 2e-3 * (1024 / 128) ** 0.5
    config.warmup_epochs = 2.0
    config.eval_batch_size = 2048
    return config
