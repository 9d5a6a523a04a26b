"""configs/flagship_cpu.py over 3 seeds, and what each of its ingredients buys.

make sweep SWEEP=configs/sweeps/flagship_cpu.py ARGS=--only=full   # the flagship's 3 seeds
make sweep SWEEP=configs/sweeps/flagship_cpu.py                    # and the ablation rows
"""

from fmnist_jax.sweep import Row, Sweep

ABLATIONS = (
    Row("full", (), "configs/flagship_cpu.py as it is"),
    Row("no_tta", {"tta": "none"}, "no test-time augmentation", evaluates="full"),
    Row("no_translate", {"augment_translate": 0}, "no random translations"),
    Row("random_flip", {"alternate_flip": False, "augment_flip": True}, "random flips, not alternating"),
    Row("no_flip", {"alternate_flip": False}, "no flips"),
    Row("no_label_smoothing", {"label_smoothing": 0.0}, "no label smoothing"),
    Row("no_cutout", {"augment_cutout": 0}, "no cutout"),
)
# The recipe's earlier versions and a candidate tried on the way, for comparison.
HOLD_OUT_6000 = {"validation_fraction": 0.1}
EARLIER = (
    Row(
        "no_cutout_28_epochs",
        {**HOLD_OUT_6000, "augment_cutout": 0, "num_epochs": 28},
        "version 1: 6,000 held out, no cutout, 28 epochs",
    ),
    Row("validation_10pct", HOLD_OUT_6000, "version 2: 6,000 held out (54,000 to train on)"),
    Row("epochs_36", {**HOLD_OUT_6000, "num_epochs": 36}, "version 2 for 36 epochs"),
)


def get_sweep() -> Sweep:
    return Sweep(name="flagship_cpu", config="configs/flagship_cpu.py", rows=ABLATIONS + EARLIER)
