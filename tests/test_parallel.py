"""Data parallelism: 1 device vs 'jit' and 'pmap' over 8 forced CPU devices."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from fmnist_jax import configuration, parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def eight_device_runs():
    proc = subprocess.run(
        [sys.executable, "tests/parallel_worker.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={
            **os.environ,
            "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONPATH": ROOT,
        },
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


# Eight devices sum gradients and batch-norm moments in another order than one
# device does: float32 rounding (~1e-7 relative per op) compounds over a few
# steps of Adam, so losses agree to ~1e-5 and parameters to ~1e-4, not bitwise.
RTOL, ATOL = 2e-4, 2e-5


@pytest.mark.parametrize("mode", ["jit", "pmap"])
def test_eight_devices_match_one_device(eight_device_runs, mode):
    one, many = eight_device_runs["one"], eight_device_runs[mode]
    np.testing.assert_allclose(many["losses"], one["losses"], rtol=RTOL)
    assert many["losses"][-1] < many["losses"][0]
    np.testing.assert_allclose(many["accuracies"], one["accuracies"], atol=1e-6)
    assert many["params"].keys() == one["params"].keys()
    for name, values in one["params"].items():
        if "Conv" in name and "bias" in name:
            # Followed by batch norm: a gradient of exactly 0 from the fused block, on any
            # number of devices (through autodiff, rounding noise that Adam scales up).
            assert not np.any(values) and not np.any(many["params"][name]), name
        np.testing.assert_allclose(many["params"][name], values, rtol=RTOL, atol=ATOL, err_msg=name)
    for a, b in zip(many["batch_stats"], one["batch_stats"], strict=True):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("mode", ["jit", "pmap"])
def test_sharded_evaluation_counts_every_example_once(eight_device_runs, mode):
    one, many = eight_device_runs["one"]["eval"], eight_device_runs[mode]["eval"]
    assert one["count"] == many["count"] == 1001  # 1001 is not a multiple of 8: padded, masked.
    np.testing.assert_array_equal(
        np.sum(many["confusion_matrix"], axis=1), np.sum(one["confusion_matrix"], axis=1)
    )
    assert abs(many["accuracy"] - one["accuracy"]) <= 2 / 1001  # Near-ties may flip.
    assert many["loss"] == pytest.approx(one["loss"], rel=1e-4)


def test_batch_size_must_divide_over_devices(tmp_path):
    """Through launch.py on eight devices: a batch of 100 is refused with one line
    before anything is written; 128 trains."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "TF_CPP_MIN_LOG_LEVEL": "2"}

    def launch(batch_size, workdir):
        return subprocess.run(
            [
                sys.executable,
                "launch.py",
                "--config=configs/mlp_4x2.py",
                "--config.num_epochs=1",
                "--config.validation_fraction=0.99",
                "--config.write_report=False",
                f"--config.batch_size={batch_size}",
                f"--workdir={workdir}",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )

    refused = launch(100, tmp_path / "refused")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "error: config.batch_size=100 is not divisible by the 8 devices" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "refused").exists()
    trained = launch(128, tmp_path / "trained")  # 600 // 128 = 4 steps of 16 images per device.
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert "8x cpu" in trained.stdout and (tmp_path / "trained" / "results.json").is_file()
    par = parallel.DataParallel("jit", jax.devices()[:1])
    par.check_batch_size(7)  # Any batch divides over one device.


def test_unknown_parallelism_is_refused():
    with pytest.raises(configuration.ConfigError, match=r"config\.parallelism='xmap'"):
        parallel.DataParallel("xmap")
