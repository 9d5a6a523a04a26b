"""Two processes on 127.0.0.1 (jax.distributed, gloo) against one process."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import read_until, rest_of_output

from fmnist_jax import checkpointing, evaluate, parallel, steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# No batch norm here: tests/test_parallel.py covers batch norm over 8 devices.
ARGS = [
    "--config=configs/cnn2_64.py",
    "--config.model.conv_features=(8,8)",
    "--config.model.dense_features=(32,)",
    "--config.num_epochs=1",
    "--config.batch_size=256",
    "--config.validation_fraction=0.7",
    "--config.write_report=False",
]
STEPS = 18_000 // 256  # One epoch of the 30 % of the training split left after validation: 70.


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_processes(workdir, num_processes, *more):
    port = free_port()
    extra = (
        []
        if num_processes == 1
        else [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}"]
    )
    return [
        subprocess.Popen(
            [sys.executable, "launch.py", *ARGS, *more, f"--workdir={workdir}", *extra]
            + ([f"--process_id={i}"] if num_processes > 1 else []),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        for i in range(num_processes)
    ]


def run_processes(workdir, num_processes, *more):
    procs = start_processes(workdir, num_processes, *more)
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
    assert a["step"] == b["step"] == STEPS
    # Same global batches. Two processes feed batches step by step from the host while
    # one process runs the scanned program: the order of sums differs, and rounding
    # differences grow over the steps (over 187 steps the two ended 1.1e-4 apart in validation loss).
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


def saved_state(workdir):
    config = evaluate.load_workdir_config(str(workdir))
    manager = checkpointing.create_manager(str(workdir), create=False)
    _, template = steps.create_train_state(config, jax.random.PRNGKey(0), steps_per_epoch=1)
    return checkpointing.restore(manager, manager.latest_step(), template)[0]


def test_sigterm_to_one_process_stops_both_at_the_same_step_then_resumes(runs, tmp_path):
    """A preempted host: SIGTERM to process 1 only. Both processes agree on the step,
    save it and exit 0; the same commands again resume and end with the parameters of
    the uninterrupted two-process run, bit for bit."""
    two, _, _ = runs
    procs = start_processes(tmp_path, 2)
    first = read_until(procs[0], "compiled the train step")
    time.sleep(1.0)
    procs[1].send_signal(signal.SIGTERM)
    outs = [first + rest_of_output(procs[0], timeout=300), rest_of_output(procs[1], timeout=300)]
    assert [p.returncode for p in procs] == [0, 0], outs
    caught = [[ln for ln in out.splitlines() if "caught" in ln] for out in outs]
    assert [len(c) for c in caught] == [1, 1], outs
    assert caught[0][0].startswith(
        "process 0: caught a signal to another process: saved a checkpoint at step "
    )
    assert caught[1][0].startswith("process 1: caught SIGTERM: saved a checkpoint at step ")
    step = int(caught[0][0].split("at step ")[1].split()[0])
    assert int(caught[1][0].split("at step ")[1].split()[0]) == step
    assert 0 < step < STEPS
    assert checkpointing.create_manager(str(tmp_path), create=False).latest_step() == step

    outs = run_processes(tmp_path, 2)
    assert f"resumed from the checkpoint at step {step}" in outs[0]
    resumed, reference = saved_state(tmp_path), saved_state(two)
    assert int(resumed.step) == int(reference.step) == STEPS
    for a, b in zip(
        jax.tree_util.tree_leaves(resumed.params), jax.tree_util.tree_leaves(reference.params), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_killed_process_stops_the_other_at_once_and_the_run_resumes(tmp_path):
    """SIGKILL to process 1 after a mid-epoch checkpoint: process 0 exits non-zero at
    once with one line naming the lost process (within parallel.HEARTBEAT_TIMEOUT_SECONDS
    in any case); the checkpoint stays and both processes rerun from it to the end."""
    every = ["--config.checkpoint_every_steps=20"]
    procs = start_processes(tmp_path, 2, *every)
    deadline = time.time() + 240
    while time.time() < deadline and not (tmp_path / "checkpoints" / "20").is_dir():
        time.sleep(0.05)
    procs[1].kill()
    t = time.time()
    out, _ = procs[0].communicate(timeout=120)
    assert time.time() - t < parallel.HEARTBEAT_TIMEOUT_SECONDS <= 60
    assert procs[0].returncode == 1, out[-3000:]
    assert out.strip().splitlines()[-1].startswith("error: process 0: lost process 1 of 2 (")
    # The last line is ours; orbax's writer threads may log their own errors before it.
    assert out.strip().splitlines()[-1].endswith("rerun every process to resume from it")
    procs[1].wait()
    saved = checkpointing.create_manager(str(tmp_path), create=False).latest_step()
    assert saved is not None and saved >= 20

    outs = run_processes(tmp_path, 2, *every)
    assert f"resumed from the checkpoint at step {saved}" in outs[0]
    assert saved_state(tmp_path).step == STEPS
