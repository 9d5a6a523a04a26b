"""make reproduce: finished runs are never retrained; the table is computed from results.json."""

import json
import os

import pytest

from fmnist_jax import reproduce


def _finish(root, row, seed, accuracy):
    workdir = reproduce.run_dir(root, row, seed)
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
    assert [reproduce.was_resumed(reproduce.run_dir(str(tmp_path), row, s)) for s in (0, 1)] == [False, True]
    table = reproduce.results_table(str(tmp_path), [0, 1])
    line = next(ln for ln in table.splitlines() if ln.startswith("| `mlp_4x2` "))
    assert line.endswith("| 10 | 20* |")
    assert "- `mlp_4x2`*: seed 1 was interrupted and resumed" in table
    assert "Total wall time of the runs shown: at least 1 min." in table


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
