"""make reproduce: finished runs are never retrained; the table is computed from results.json."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fmnist_jax import reproduce, sweep


def _finish(root, row, seed, accuracy):
    workdir = sweep.run_dir(root, row, seed)
    os.makedirs(workdir)
    result = {
        "test": {"accuracy": accuracy},
        "num_params": 3210,
        "num_epochs": 10,
        "batch_size": 32,
        "train_seconds": 10.0,
        "wall_seconds": 20.0,
        "machine": "test machine",
        "finished": "2026-01-01 00:00 UTC",
    }
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(result, f)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump({"schedule": "constant", "learning_rate": 0.001}, f)


def test_finished_runs_are_not_retrained_and_the_table_is_their_mean(tmp_path, monkeypatch):
    row = next(r for r in reproduce.ROWS if r.name == "mlp_4x2")
    for seed, acc in [(0, 0.80), (1, 0.82), (2, 0.84)]:
        _finish(str(tmp_path), row, seed, acc)
    trained = []
    monkeypatch.setattr(reproduce, "train_one", lambda *a: trained.append(a))
    out = tmp_path / "RESULTS.md"
    assert reproduce.main(["--only=mlp_4x2", f"--root={tmp_path}", f"--output={out}"]) == 0
    assert trained == []
    table = out.read_text()
    line = next(ln for ln in table.splitlines() if ln.startswith("| `mlp_4x2` "))
    assert "0.8200 ± 0.0200" in line and "3/3" in line and "| yes |" in line
    assert "| `cnn4` |" in table and "not run yet" in table  # Every row is listed.
    assert line.endswith("| 10 | 20 |") and "resumed" not in table


def test_resumed_runs_are_flagged_in_the_table(tmp_path):
    row = next(r for r in reproduce.ROWS if r.name == "mlp_4x2")
    for seed in (0, 1):
        _finish(str(tmp_path), row, seed, 0.8)
    (tmp_path / "mlp_4x2" / "seed1" / "train.log").write_text(
        "mlp_4x2: ...\nresumed from the checkpoint at step 3374 in x/checkpoints\n"
    )
    assert [sweep.was_resumed(sweep.run_dir(str(tmp_path), row, s)) for s in (0, 1)] == [False, True]
    repro = reproduce.Reproduction(reproduce.ROWS, str(tmp_path), str(tmp_path / "record.json"))
    table = reproduce.results_table(repro, [0, 1])
    line = next(ln for ln in table.splitlines() if ln.startswith("| `mlp_4x2` "))
    assert line.endswith("| 10 | 20* |")
    assert "- `mlp_4x2`*: seed 1 was interrupted and resumed" in table
    assert "Total wall time of the runs shown: at least 1 min." in table


def test_a_clone_without_the_runs_rewrites_the_same_table_from_the_record(tmp_path, monkeypatch):
    """The record (default <output's folder>/sweeps/reproduce.json) keeps what the table
    needs of every finished run: with the run directories gone, the same command trains
    nothing and writes the same page."""
    row = next(r for r in reproduce.ROWS if r.name == "mlp_4x2")
    for seed, acc in [(0, 0.80), (1, 0.83)]:
        _finish(str(tmp_path / "runs"), row, seed, acc)
    (tmp_path / "runs" / "mlp_4x2" / "seed1" / "train.log").write_text(
        "resumed from the checkpoint at step 9\n"
    )
    trained = []
    monkeypatch.setattr(reproduce, "train_one", lambda *a: trained.append(a))
    out = tmp_path / "docs" / "RESULTS.md"
    args = ["--only=mlp_4x2", "--seeds=0,1", f"--output={out}"]
    assert reproduce.main([*args, f"--root={tmp_path / 'runs'}"]) == 0
    here = out.read_text()
    record = json.loads((tmp_path / "docs" / "sweeps" / "reproduce.json").read_text())["runs"]
    assert sorted(record) == ["mlp_4x2/seed0", "mlp_4x2/seed1"]
    assert record["mlp_4x2/seed1"]["resumed"] and not record["mlp_4x2/seed0"]["resumed"]
    assert record["mlp_4x2/seed0"]["schedule"] == "constant"

    out.unlink()
    assert reproduce.main([*args, f"--root={tmp_path / 'gone'}"]) == 0
    assert trained == []
    clone = out.read_text()
    assert clone == here.replace(f"{tmp_path / 'runs'}/", f"{tmp_path / 'gone'}/")
    assert "0.8150 ± 0.0212" in clone and "| 10 | 20* |" in clone


def test_a_malformed_record_is_an_error_naming_it_and_nothing_is_written(tmp_path, capsys):
    out = tmp_path / "RESULTS.md"
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "reproduce.json").write_text("[1, 2]")
    with pytest.raises(SystemExit):
        reproduce.main(["--only=mlp_4x2", f"--root={tmp_path}", f"--output={out}", "--table_only"])
    assert "not a sweep record" in capsys.readouterr().err
    assert not out.exists()


def test_missing_runs_are_trained_in_seed_major_order(tmp_path, monkeypatch):
    _finish(str(tmp_path), reproduce.ROWS[0], 0, 0.33)
    order = []

    def fake_train(row, seed, workdir):
        order.append((row.name, seed))
        _finish(str(tmp_path), row, seed, 0.5)

    monkeypatch.setattr(reproduce, "train_one", fake_train)
    names = f"{reproduce.ROWS[0].name},{reproduce.ROWS[1].name}"
    args = [f"--only={names}", "--seeds=0,1", f"--root={tmp_path}", f"--output={tmp_path / 'R.md'}"]
    assert reproduce.main(args) == 0
    assert order == [(reproduce.ROWS[1].name, 0), (reproduce.ROWS[0].name, 1), (reproduce.ROWS[1].name, 1)]


def test_unknown_row_is_an_error(tmp_path):
    with pytest.raises(SystemExit):
        reproduce.main(["--only=nope", f"--root={tmp_path}", f"--output={tmp_path / 'R.md'}"])
    assert not (tmp_path / "R.md").exists()


TINY = reproduce.Row(
    "tiny",
    "mlp_4x2",
    "0.80",
    None,
    ("--config.validation_fraction=0.99", "--config.num_epochs=2", "--config.steps_per_dispatch=1"),
)
# `python -m fmnist_jax.reproduce` with the table reduced to the tiny row.
RUN_TINY = (
    # As from an interactive shell: Ctrl-C interrupts (a background job ignores SIGINT).
    "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "import sys; from fmnist_jax import reproduce as r; from fmnist_jax.reproduce import Row; "
    f"r.ROWS = ({TINY!r},); sys.exit(r.main(sys.argv[1:]))"
)


def _start_tiny(tmp_path, args):
    """`reproduce` of the tiny row in a process session of its own; returns the process
    once its training child has set up (its signal handlers are in place) and the log."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN_TINY, *args, f"--root={tmp_path / 'runs'}"],
        cwd=reproduce.ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    log = tmp_path / "runs" / "tiny" / "seed0" / "train.log"
    deadline = time.time() + 120
    # Set-up is done (the signal handlers are in place) once the child prints this line.
    while time.time() < deadline and not (log.exists() and " parameters; " in log.read_text()):
        time.sleep(0.02)
    return proc, log


def test_an_interrupted_run_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """Ctrl-C (SIGINT to the process group) stops `reproduce` and its training child,
    which saves; the same command again resumes that run and finishes it with the
    results of a run never interrupted."""
    args = ["--only=tiny", "--seeds=0", f"--output={tmp_path / 'R.md'}"]
    proc, log = _start_tiny(tmp_path, args)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "run the same command again to resume" in out
    assert "caught SIGINT: saved a checkpoint at step" in log.read_text()
    assert not (log.parent / "results.json").exists()

    monkeypatch.setattr(reproduce, "ROWS", (TINY,))
    assert reproduce.main([*args, f"--root={tmp_path / 'runs'}"]) == 0
    # Its own record: the first one holds the resumed run, which would count as finished.
    assert reproduce.main([*args, f"--root={tmp_path / 'fresh'}", f"--record={tmp_path / 'fresh.json'}"]) == 0
    resumed = sweep.load_result(str(log.parent))
    fresh = sweep.load_result(str(tmp_path / "fresh" / "tiny" / "seed0"))
    assert "resumed from the checkpoint at step" in log.read_text()
    assert resumed["step"] == fresh["step"] == 2 * 18
    assert resumed["test"] == fresh["test"]
    assert sweep.was_resumed(str(log.parent))


def test_sigterm_to_the_command_alone_stops_its_training_child_too(tmp_path):
    """SIGTERM sent to `reproduce` only (a scheduler, `kill PID`) reaches its training
    child, which saves; `reproduce` exits 143 after it, leaving nothing training alone."""
    args = ["--only=tiny", "--seeds=0", f"--output={tmp_path / 'R.md'}"]
    proc, log = _start_tiny(tmp_path, args)
    try:
        os.kill(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 143, out
        assert "SIGTERM: tiny seed 0 stopped" in out and "run the same command again to resume" in out
        # Written by the child as it exits, so before `reproduce` did.
        assert "caught SIGTERM: saved a checkpoint at step" in log.read_text()
        assert not (log.parent / "results.json").exists()
    finally:
        with contextlib.suppress(ProcessLookupError):  # A child left training, if any.
            os.killpg(proc.pid, signal.SIGKILL)
