"""Forced CPU devices that reach a collective far apart: the process waits, not aborts."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Device 1 sleeps in a host callback before the psum that device 0 already waits in.
LATE_DEVICE = """
import sys, time
import numpy as np
import fmnist_jax
import jax, jax.numpy as jnp

def late(i):
    if int(i) == 1:
        time.sleep(float(sys.argv[1]))
    return np.float32(i)

def step(x):
    i = jax.lax.axis_index("d")
    y = jax.pure_callback(late, jax.ShapeDtypeStruct((), jnp.float32), i)
    return jax.lax.psum(x + y, "d")

print(jax.pmap(step, axis_name="d")(jnp.array([1.0, 2.0])).tolist())
"""


def test_a_device_65_seconds_late_to_a_collective_does_not_abort_the_process():
    """XLA:CPU by itself aborts after 60 s (a warning at 20 s, then 40 s more);
    fmnist_jax raises the limit, so the psum completes."""
    proc = subprocess.run(
        [sys.executable, "-c", LATE_DEVICE, "65"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONPATH": ROOT,
        },
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["[4.0,", "4.0]"]  # (1 + 0) + (2 + 1) on both devices.
