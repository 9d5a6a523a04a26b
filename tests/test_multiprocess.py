"""Two processes on 127.0.0.1 (jax.distributed, gloo) against one process."""

import json
import os
import socket
import subprocess
import sys

import pytest

from fmnist_jax import evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# No batch norm here: a conv bias before batch norm gets only rounding noise as its
# gradient, which Adam turns into different steps per process count, and the eval-time
# running means then differ (tests/test_parallel.py covers batch norm over 8 devices).
ARGS = [
    "--config=configs/cnn2_64.py",
    "--config.model.conv_features=(8,8)",
    "--config.model.dense_features=(32,)",
    "--config.num_epochs=1",
    "--config.batch_size=256",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(workdir, num_processes):
    port = free_port()
    extra = (
        []
        if num_processes == 1
        else [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}"]
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "launch.py", *ARGS, f"--workdir={workdir}", *extra]
            + ([f"--process_id={i}"] if num_processes > 1 else []),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        for i in range(num_processes)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    return outs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    two = tmp_path_factory.mktemp("two_processes")
    one = tmp_path_factory.mktemp("one_process")
    outs = run_processes(two, 2)
    run_processes(one, 1)
    return two, one, outs


def test_two_processes_train_like_one(runs):
    two, one, outs = runs
    assert "2x cpu" in outs[0]
    assert "test accuracy" in outs[0] and "test accuracy" not in outs[1]  # Only process 0 reports.
    with open(two / "results.json") as f:
        a = json.load(f)
    with open(one / "results.json") as f:
        b = json.load(f)
    assert a["step"] == b["step"] == 48_000 // 256
    # Same global batches. Two processes feed batches step by step from the host while
    # one process runs the scanned program: the order of sums differs, and rounding
    # differences grow over 187 steps (the two ended 1.1e-4 apart in validation loss).
    assert a["test"]["loss"] == pytest.approx(b["test"]["loss"], rel=5e-4)
    assert abs(a["test"]["accuracy"] - b["test"]["accuracy"]) <= 1e-3
    assert a["validation"]["loss"] == pytest.approx(b["validation"]["loss"], rel=5e-4)


def test_two_process_checkpoint_evaluates_in_one_process(runs):
    two, _, _ = runs
    with open(two / "results.json") as f:
        trained = json.load(f)
    report = evaluate.evaluate_checkpoint(str(two), "latest")
    assert report["step"] == trained["step"]
    assert report["test"]["count"] == 10_000
    assert report["test"]["loss"] == pytest.approx(trained["test"]["loss"], rel=1e-5)
    assert abs(report["test"]["accuracy"] - trained["test"]["accuracy"]) <= 2e-4
