"""Flagship for a 2-core CPU: an airbench-style residual net, augmented on the device.

Three stages of conv -> 2x2 max pool -> BN -> ReLU with one residual pair (32, 64, 128
features; 28 -> 14 -> 7 -> 3), global max pool, Dense: 483,498 parameters. Nesterov SGD
(momentum 0.9, rate 0.1 at batch 256) with decoupled weight decay 5e-4, one epoch of
warmup then linear decay to 0, label smoothing 0.1; alternating flips, translations of
up to 2 pixels and cutout 8 drawn on the device; test-time augmentation over 6 views;
32 epochs on 58,800 training images (1,200 held out for validation, which selects nothing).

    python launch.py --config=configs/flagship_cpu.py [--config.seed=K]
    make sweep SWEEP=configs/sweeps/flagship_cpu.py ARGS=--only=full   # seeds 0, 1, 2

Measured here (the sweep, docs/RESULTS.md "Beyond the seeds"; the 2-core AMD EPYC,
family 25 model 17, Zen 4, 2026-12-01): test accuracy 0.9450 ± 0.0016 over seeds 0, 1, 2
(0.9468, 0.9438, 0.9444) after 1,615 s of training per seed on average (about 27 min;
seed 0's 1,723 s include other jobs on the cores for about 8 of its 32 epochs). That is
the 0.945 this config aims at, with no margin: the seeds spread more than that.
Earlier versions on the same machine, with 6,000 images held out (54,000 to train on):
0.9439 ± 0.0016 in 1,412 s per seed; without cutout, for 28 epochs, seed 0: 0.9434.
On the slowest class seen, the 2-core AMD EPYC of family 23 model 1 (Zen/Zen+, AVX2),
2026-12-02, the same sweep (its record, docs/sweeps/flagship_cpu.json): 0.9448 ± 0.0004
over seeds 0, 1, 2 (0.9449, 0.9443, 0.9451; 0.9416 ± 0.0014 without test-time
augmentation) after 3,983 s of training per seed on average (66 min: 4,255, 3,870 and
3,824 s; seeds 0 and 1 shared the cores with short test runs in some epochs, seed 2 ran
alone). Below 0.945 by 0.0002 there, well within the seeds' spread, and over twice the
30 minutes this config is sized for. Its ablation rows' runs (same network and epochs;
docs/sweeps/flagship_cpu.json) took 2,061-2,130 s of training on Zen 3 (family 25
model 1, AVX2) and 1,529-1,981 s on an Intel Xeon of family 6 model 207 (Emerald
Rapids; eight runs), both 2 cores: about 25-36 min, around the 30.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.name = "flagship_cpu"
    config.model = ml_collections.ConfigDict(
        {
            "name": "resnet",
            "block": "pool",
            "stage_features": (32, 64, 128),
            "stage_blocks": 1,
            "head_pool": "max",
            # Running statistics that keep up with a fast-moving network (flax's convention).
            "bn_momentum": 0.9,
        }
    )
    # Validation selects nothing here (the final epoch is the result): a small one leaves
    # more images to train on.
    config.validation_fraction = 0.02
    config.num_epochs = 32
    config.batch_size = 256
    config.optimizer = "sgd"
    config.nesterov = True
    config.momentum = 0.9
    config.learning_rate = 0.1
    config.weight_decay = 5e-4
    config.label_smoothing = 0.1
    config.schedule = "warmup_linear"
    config.warmup_epochs = 1.0
    config.alternate_flip = True
    config.augment_translate = 2
    config.augment_cutout = 8
    config.tta = "flip_translate"
    return config
