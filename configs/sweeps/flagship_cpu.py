"""configs/flagship_cpu.py over 3 seeds, and what each of its ingredients buys.

The recipe's earlier versions (6,000 images held out; 28 or 36 epochs; no cutout) are
history, not ingredients: docs/RESULTS.md keeps their Zen 4 measurements in the table
"flagship_cpu: the first measurement, on Zen 4", and this sweep no longer trains them.

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


def get_sweep() -> Sweep:
    return Sweep(name="flagship_cpu", config="configs/flagship_cpu.py", rows=ABLATIONS)
