"""Defaults shared by every config; each config in configs/ imports and overrides it.

Not a model on its own: `model` is filled in by the model configs.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.name = "default"
    config.model = ml_collections.ConfigDict({"name": "mlp", "hidden": (128,)})

    # Data.
    config.data_dir = config_dict.placeholder(str)  # None: tfds's own data dir.
    config.validation_fraction = 0.1
    config.split_seed = 0  # Seeds the train/validation carve, independent of `seed`.
    config.normalize = True  # Pixels / 255; False keeps raw 0-255 (seed 001, model 1).
    config.augment_flip = False  # Random horizontal flips of training images.
    # On the device, inside the train step; every draw a function of (seed, step).
    # alternate_flip: a random half of the training images mirrored once, then every
    # image mirrored on odd epochs (each seen both ways in turn; not with augment_flip).
    config.alternate_flip = False
    config.augment_translate = 0  # Random shifts of up to this many pixels (0: off).
    config.augment_cutout = 0  # A zeroed square of this side at a random place (0: off).
    # Test-time augmentation in every evaluation (each epoch's validation, the final test,
    # --mode=eval, ensemble members): logits averaged over "none" (1 view), "flip" (2)
    # or "flip_translate" (6: also shifted by -tta_shift and +tta_shift pixels both ways).
    config.tta = "none"
    config.tta_shift = 1

    # Data parallelism over all devices: "jit" (sharded over a mesh) or "pmap".
    config.parallelism = "jit"
    # "bfloat16": activations and matmuls in bfloat16 (GPU/TPU); parameters, optimizer
    # state and batch-norm statistics stay float32, and so do the logits and the loss.
    config.compute_dtype = "float32"
    # Training steps per host dispatch, compiled into one lax.scan over batches gathered
    # on the device from the split placed there once. 0: sized by time (the first dispatch
    # of 16 steps is timed; then the power of two of steps nearest 1 s of work, at most an
    # epoch), so progress moves and a signal is answered within seconds. pmap and
    # multi-process runs go step by step. Results are identical for any value.
    config.steps_per_dispatch = 0

    # Optimisation.
    config.seed = 0
    config.num_epochs = 10
    config.batch_size = 128
    config.eval_batch_size = 1000
    config.optimizer = "adam"  # adam | adamw | sgd
    config.learning_rate = 1e-3
    config.adam_b1 = 0.9
    config.adam_b2 = 0.999
    config.adam_eps = 1e-7  # Keras's Adam epsilon.
    config.weight_decay = 0.0  # adamw and sgd: decoupled (not through momentum), times the rate.
    config.momentum = 0.9  # Used by sgd only.
    config.nesterov = False  # Used by sgd only.
    config.label_smoothing = 0.0
    # An exponential moving average of the weights (0: off), updated every step with
    # decay min(ema_decay, (1 + step) / (10 + step)); evaluated and checkpointed.
    config.ema_decay = 0.0

    # Learning-rate schedule: constant | exponential | cosine | warmup_cosine | one_cycle
    # | warmup_linear (linear rise over warmup_epochs, then linear decay to final_lr_fraction).
    config.schedule = "constant"
    config.warmup_epochs = 0.0  # warmup_cosine: linear warmup; one_cycle: rising phase.
    config.final_lr_fraction = 0.0  # cosine, warmup_cosine: final rate / peak rate.
    config.epochs_per_decade = 20.0  # exponential: rate x10 every this many epochs (<0 decays).

    # --mode=lr_find: the rate grows exponentially from min to max over this many steps.
    config.lr_find_min = 1e-6
    config.lr_find_max = 1.0
    config.lr_find_steps = 300

    # --mode=best_of_n (seed 003): this many models, each on its own validation carve
    # (split seeds split_seed, split_seed + 1, ...), trained at once with jax.vmap.
    config.best_of_n = 4
    config.best_of_n_sequential_baseline = False  # Also train them one by one; report the speedup.

    # Time-to-accuracy runs (the benchmark): test-split accuracy after every epoch, in
    # each epoch's record with the seconds since the process started, and an early stop
    # at the first epoch whose test accuracy reaches `stop_at_test_accuracy` (0: off).
    # Choosing when to stop by the test split is for measuring speed, not for results.
    config.test_every_epoch = False
    config.stop_at_test_accuracy = 0.0

    # JAX's persistent compilation cache, so a relaunch (resume, rerun, --mode=eval) skips
    # compiling: "auto" ($FMNIST_JAX_COMPILATION_CACHE, else ~/.cache/fmnist_jax/xla),
    # "off", or a folder. The environment variable set to "off" turns it off too.
    config.compilation_cache = "auto"

    # One experiment per workdir: resuming a workdir whose config.json differs in a field
    # that changes results is refused. "num_epochs" here allows training a run with a
    # constant or exponential schedule for more (or fewer) epochs.
    config.allow_config_change = ""

    # Figures and report.html in <workdir>/report/ at the end of a run.
    config.write_report = True

    # Checkpoints in <workdir>/checkpoints (the two newest and the best by validation accuracy).
    config.checkpoint_every_epochs = 1
    config.checkpoint_every_steps = 0  # > 0: also save mid-epoch every this many steps.
    return config
