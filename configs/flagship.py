"""Flagship for one GPU: an airbench-style residual net, augmented on the device.

Stem conv 32, then three stages of conv -> 2x2 max pool -> BN -> ReLU with one residual
pair (128, 384, 512 features; 28 -> 14 -> 7 -> 3), global max pool, Dense. Nesterov SGD
with decoupled weight decay, warmup then linear decay, label smoothing 0.2, alternating
flips + translations of up to 2 pixels + cutout 8, bfloat16 compute, the training split
on the device; test-time augmentation over 6 views (flip, and shifts of 1 pixel).

    python launch.py --config=configs/flagship.py [--config.seed=K]
    # 5 seeds, and what test-time augmentation buys (no retraining):
    make sweep SWEEP=configs/sweeps/flagship.py ARGS="--only=full,no_tta --seeds=0,1,2,3,4"
    # Their final checkpoints as one model, each member with its 6 test-time views:
    python launch.py --mode=ensemble --checkpoint=latest \
        --workdir=runs/sweeps/flagship/full/seed{0,1,2,3,4} --output=runs/flagship_ensemble.json
    make sweep SWEEP=configs/sweeps/flagship.py                 # the ablation rows, 3 seeds

Not yet measured on a GPU: the target is >= 0.960 test accuracy (mean of 3 seeds, final
epoch) in at most 2 minutes of training per seed on one H100. The recipe is
configs/flagship_cpu.py's, widened and with a 4x batch (the rate scaled with it).
"""

import ml_collections

from configs import flagship_cpu


def get_config() -> ml_collections.ConfigDict:
    config = flagship_cpu.get_config()
    config.name = "flagship"
    config.model.stem_features = 32
    config.model.stage_features = (128, 384, 512)
    config.compute_dtype = "bfloat16"
    config.batch_size = 1024
    config.eval_batch_size = 2048
    config.learning_rate = flagship_cpu.get_config().learning_rate * 4
    config.num_epochs = 40
    config.warmup_epochs = 2.0
    config.label_smoothing = 0.2
    config.augment_cutout = 8
    # Batch-norm statistics averaged over as many images as at batch 256.
    config.model.bn_momentum = flagship_cpu.get_config().model.bn_momentum ** 4
    return config
