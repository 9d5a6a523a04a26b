"""configs/flagship.py (one GPU) over 3 seeds, and what each of its ingredients buys.

make sweep SWEEP=configs/sweeps/flagship.py ARGS=--only=full   # the flagship's 3 seeds
make sweep SWEEP=configs/sweeps/flagship.py                    # and the ablation rows
make sweep SWEEP=configs/sweeps/flagship.py ARGS="--only=full,no_tta --seeds=0,1,2,3,4"
                                                               # 5 seeds, for an ensemble of 5
"""

from configs.sweeps import flagship_cpu
from fmnist_jax.sweep import Row, Sweep

ABLATIONS = (
    Row("full", (), "configs/flagship.py as it is"),
    *flagship_cpu.ABLATIONS[1:],
    Row("float32", {"compute_dtype": "float32"}, "float32 compute"),
)


def get_sweep() -> Sweep:
    return Sweep(name="flagship", config="configs/flagship.py", rows=ABLATIONS)
