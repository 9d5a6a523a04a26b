"""make sweep: a tiny 2-row x 2-seed sweep trained for real, its table computed from the
runs' results.json, finished runs never retrained, a run without results resumed, the
markdown outside the sweep's markers untouched, and one-line errors."""

import json
import os
import shutil
import statistics
import subprocess
import sys

import pytest

from fmnist_jax import sweep

TINY = ("--config.validation_fraction=0.99", "--config.num_epochs=2", "--config.write_report=False")
SWEEP_FILE = """
from fmnist_jax.sweep import Row, Sweep


def get_sweep():
    return Sweep(
        name="tiny",
        config="configs/mlp_4x2.py",
        seeds=(0, 1),
        rows=(Row("base", {tiny!r}, "the tiny run"), {second}),
        root={root!r},
        output={output!r},
    )
"""
BEFORE = "# Notes\n\nKept as it is.\n\n## Beyond the seeds\n\n"
AFTER = "\n\nAn older paragraph.\n\n## Later\n\nThe end.\n"


LR_HIGH = 'Row("lr_high", {"validation_fraction": 0.99, "num_epochs": 2, "learning_rate": 0.01}, "lr 1e-2")'


def _write_sweep(directory, name="tiny.py", second=LR_HIGH):
    """The tiny sweep file: row `base` and the `second` row (Python source)."""
    path = directory / name
    path.write_text(
        SWEEP_FILE.format(
            tiny=TINY, second=second, root=str(directory / "runs"), output=str(directory / "RESULTS.md")
        )
    )
    return str(path)


def _launches(workdir):
    """How many training processes the sweep started in `workdir` (train.log's command lines)."""
    with open(os.path.join(workdir, "train.log")) as f:
        return sum(line.startswith("$ ") for line in f)


def _line(table, row):
    return next(ln for ln in table.splitlines() if ln.startswith(f"| `{row}` "))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny sweep trained to the end (4 runs of 2 epochs on 600 images)."""
    directory = tmp_path_factory.mktemp("sweep")
    (directory / "RESULTS.md").write_text(BEFORE.rstrip("\n") + AFTER)
    path = _write_sweep(directory)
    assert sweep.main([f"--sweep={path}"]) == 0
    return directory, path


def _runs(directory):
    return {
        (row, s): str(directory / "runs" / row / f"seed{s}") for row in ("base", "lr_high") for s in (0, 1)
    }


def test_the_table_is_the_mean_and_std_of_the_final_test_accuracies(tiny):
    directory, _ = tiny
    results = {key: sweep.load_result(workdir) for key, workdir in _runs(directory).items()}
    accuracy = {key: r["test"]["accuracy"] for key, r in results.items()}
    assert len(set(accuracy.values())) == 4  # Distinct, so a mix-up of rows or seeds shows.
    table = (directory / "RESULTS.md").read_text()
    means = {}
    for row in ("base", "lr_high"):
        accs = [accuracy[row, 0], accuracy[row, 1]]
        means[row] = statistics.fmean(accs)
        line = _line(table, row)
        assert f"| {means[row]:.4f} ± {statistics.stdev(accs):.4f} |" in line
        assert "| 2/2 |" in line
        seconds = statistics.fmean(results[row, s]["train_seconds"] for s in (0, 1))
        assert f"| {seconds:.{0 if seconds >= 10 else 1}f} |" in line
        assert line.endswith(f"| {results[row, 0]['machine']} |")
    assert "| baseline |" in _line(table, "base")
    assert f"| {means['lr_high'] - means['base']:+.4f} |" in _line(table, "lr_high")
    assert "| lr 1e-2 (`validation_fraction=0.99`, `num_epochs=2`, `learning_rate=0.01`) |" in table
    assert "4 of 4 runs finished, between " in table


def test_the_table_replaces_its_markers_in_place(tiny):
    directory, path = tiny
    markdown = directory / "RESULTS.md"
    begin, end = sweep.markers("tiny")
    text = markdown.read_text()
    assert text.count(begin) == text.count(end) == 1
    assert text.startswith(BEFORE + begin + "\n### `tiny`\n")
    assert text.endswith(end + AFTER)
    markdown.write_text(text.replace("| `base` |", "| `edited by hand` |"))
    assert sweep.main([f"--sweep={path}", "--table_only"]) == 0
    assert markdown.read_text() == text


def test_a_rerun_trains_nothing_and_a_run_without_results_resumes(tiny):
    directory, path = tiny
    runs = _runs(directory)
    stamps = {key: os.stat(os.path.join(w, "results.json")).st_mtime_ns for key, w in runs.items()}
    assert sweep.main([f"--sweep={path}"]) == 0
    assert {key: _launches(w) for key, w in runs.items()} == dict.fromkeys(runs, 1)
    assert {key: os.stat(os.path.join(w, "results.json")).st_mtime_ns for key, w in runs.items()} == stamps

    # A workdir with its checkpoints, no results.json and no record entry (an interrupted
    # run): the child resumes, trains no step again.
    workdir = runs["lr_high", 1]
    before = sweep.load_result(workdir)
    sweep.forget(sweep.load_sweep(path), sweep.Row("lr_high"), 1)
    assert not os.path.exists(os.path.join(workdir, "results.json"))
    assert sweep.main([f"--sweep={path}"]) == 0
    assert {key: _launches(w) for key, w in runs.items()} == {**dict.fromkeys(runs, 1), ("lr_high", 1): 2}
    assert sweep.was_resumed(workdir)
    after = sweep.load_result(workdir)
    assert after["step"] == before["step"] == 2 * 18
    assert after["test"] == before["test"]


def _fake_result(root, row, seed, accuracy, machine="machine A"):
    workdir = os.path.join(root, row, f"seed{seed}")
    os.makedirs(workdir)
    result = {"test": {"accuracy": accuracy}, "train_seconds": 12.0, "machine": machine}
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(result, f)


def test_unfinished_rows_show_what_is_finished_and_say_so(tmp_path):
    rows = (sweep.Row("a"), sweep.Row("b", ("--config.num_epochs=3",)), sweep.Row("c"))
    plan = sweep.Sweep("s", "configs/mlp_4x2.py", rows, root=str(tmp_path))
    _fake_result(str(tmp_path), "a", 0, 0.80)
    _fake_result(str(tmp_path), "a", 2, 0.84, machine="machine B")
    _fake_result(str(tmp_path), "b", 1, 0.70)
    table = sweep.sweep_table(plan, [0, 1, 2], "s.py")
    assert _line(table, "a") == (
        "| `a` | — | 0.8200 ± 0.0283 | baseline | 2/3 (unfinished) | 12 | "
        "different machines: machine A (seed 0); machine B (seed 2) |"
    )
    assert (
        _line(table, "b") == "| `b` | `num_epochs=3` | 0.7000 | -0.1200 | 1/3 (unfinished) | 12 | machine A |"
    )
    assert _line(table, "c") == "| `c` | — | not run yet | | 0/3 | | |"
    assert "3 of 9 runs finished." in table
    # Without a finished baseline there is nothing to compare with.
    table = sweep.sweep_table(plan, [1], "s.py")
    assert _line(table, "a") == "| `a` | — | not run yet | | 0/1 | | |"
    assert "| 0.7000 | n/a | 1/1 |" in _line(table, "b")


def test_only_trains_the_rows_it_names(tmp_path, monkeypatch):
    trained = []

    def launch(command, workdir, label):
        trained.append(label)
        row, seed = workdir.split(os.sep)[-2:]
        _fake_result(str(tmp_path / "runs"), row, int(seed.removeprefix("seed")), 0.5)

    monkeypatch.setattr(sweep, "launch", launch)
    path = _write_sweep(tmp_path)
    assert sweep.main([f"--sweep={path}", "--only=lr_high", "--seeds=1,0,2"]) == 0
    assert trained == ["lr_high seed 1", "lr_high seed 0", "lr_high seed 2"]
    table = (tmp_path / "RESULTS.md").read_text()
    assert "| `base` | the tiny run (" in table and "| not run yet | | 0/3 | | |" in table
    assert "| 0.5000 ± 0.0000 | n/a | 3/3 | 12 | machine A |" in _line(table, "lr_high")


def test_training_some_seeds_keeps_the_others_in_the_table(tmp_path, monkeypatch):
    def launch(command, workdir, label):
        row, seed = workdir.split(os.sep)[-2:]
        _fake_result(str(tmp_path / "runs"), row, int(seed.removeprefix("seed")), 0.5)

    monkeypatch.setattr(sweep, "launch", launch)
    path = _write_sweep(tmp_path)  # The sweep's seeds are 0 and 1.
    _fake_result(str(tmp_path / "runs"), "base", 0, 0.7)
    assert sweep.main([f"--sweep={path}", "--only=base", "--seeds=1"]) == 0
    table = (tmp_path / "RESULTS.md").read_text()
    assert "| 0.6000 ± 0.1414 | baseline | 2/2 |" in _line(table, "base")
    assert "over seeds 0, 1." in table
    # Extra seeds join the sweep's own, after them.
    assert sweep.main([f"--sweep={path}", "--only=base", "--seeds=3"]) == 0
    table = (tmp_path / "RESULTS.md").read_text()
    assert "over seeds 0, 1, 3." in table and "| baseline | 3/3 |" in _line(table, "base")


def test_a_dry_run_prints_the_commands_and_runs_nothing(tmp_path):
    path = _write_sweep(tmp_path)
    # As `make sweep` runs it: `python -m`, where the file's Sweep must be the package's.
    out = subprocess.run(
        [sys.executable, "-m", "fmnist_jax.sweep", f"--sweep={path}", "--dry_run", "--seeds=3"],
        cwd=sweep.ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    commands = out.stdout.splitlines()[1:]
    assert len(commands) == 2
    for command, row in zip(commands, ("base", "lr_high"), strict=True):
        assert "launch.py --config=" in command and "configs/mlp_4x2.py" in command
        assert f"--workdir={tmp_path / 'runs' / row / 'seed3'}" in command and "--config.seed=3" in command
    assert "--config.learning_rate=0.01" in commands[1]
    assert os.listdir(tmp_path) == ["tiny.py"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sweep=no/such/sweep.py"], "error: --sweep=no/such/sweep.py: no such file"),
        (["--sweep={empty}"], "error: --sweep={empty}: defines no get_sweep()"),
        (
            ["--sweep={path}", "--only=base,nope"],
            "error: --only: unknown rows ['nope']; rows are ['base', 'lr_high']",
        ),
        (["--sweep={path}", "--seeds=0,x"], "error: --seeds='0,x': expected distinct non-negative integers"),
        (["--sweep={path}", "--seeds=1,1"], "error: --seeds='1,1': expected distinct non-negative integers"),
        (["--sweep={path}", "--seeds="], "error: --seeds='': expected distinct non-negative integers"),
    ],
    ids=["missing file", "no get_sweep", "unknown row", "seed not an integer", "repeated seed", "no seed"],
)
def test_mistakes_are_one_line_errors(tmp_path, capsys, args, message):
    (tmp_path / "empty.py").write_text("SWEEP = None\n")
    names = {"path": _write_sweep(tmp_path), "empty": str(tmp_path / "empty.py")}
    assert sweep.main([a.format(**names) for a in args]) == 1
    err = capsys.readouterr().err
    assert err.startswith(message.format(**names)) and err.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["empty.py", "tiny.py"]  # Nothing trained or written.


def test_a_missing_sweep_file_exits_1_without_a_traceback():
    out = subprocess.run(
        [sys.executable, "-m", "fmnist_jax.sweep", "--sweep=configs/sweeps/nope.py"],
        cwd=sweep.ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (out.returncode, out.stderr) == (1, "error: --sweep=configs/sweeps/nope.py: no such file\n")


def _write_eval_sweep(directory, flip=None):
    """The tiny sweep with row `base_flip`: base's runs evaluated with `flip` (default tta=flip)."""
    flip = flip or {"tta": "flip"}
    return _write_sweep(directory, "eval.py", f'Row("base_flip", {flip!r}, "flips", evaluates="base")')


def test_a_row_that_evaluates_another_rows_runs_trains_nothing(tiny, tmp_path):
    from fmnist_jax import evaluate

    shutil.copytree(tiny[0] / "runs" / "base", tmp_path / "runs" / "base")
    path = _write_eval_sweep(tmp_path)
    assert sweep.main([f"--sweep={path}"]) == 0
    bases = {s: str(tmp_path / "runs" / "base" / f"seed{s}") for s in (0, 1)}
    assert {s: _launches(w) for s, w in bases.items()} == {0: 1, 1: 1}  # Not retrained.
    table = (tmp_path / "RESULTS.md").read_text()
    accuracies = []
    for seed, base in bases.items():
        result = sweep.load_result(str(tmp_path / "runs" / "base_flip" / f"seed{seed}"))
        expected = evaluate.evaluate_checkpoint(base, "latest", tta="flip")
        assert result["test"]["confusion_matrix"] == expected["test"]["confusion_matrix"]
        assert result["test"]["loss"] == pytest.approx(expected["test"]["loss"], rel=1e-5)
        assert result["tta"] == "flip"
        trained = sweep.load_result(base)
        assert (result["train_seconds"], result["machine"]) == (trained["train_seconds"], trained["machine"])
        assert result["step"] == trained["step"]
        accuracies.append(result["test"]["accuracy"])
    line = _line(table, "base_flip")
    assert line.startswith("| `base_flip` | flips (`tta=flip`; `base`'s models, not retrained) | ")
    assert f"| {statistics.fmean(accuracies):.4f} ± {statistics.stdev(accuracies):.4f} |" in line
    stamp = os.stat(tmp_path / "runs" / "base_flip" / "seed0" / "results.json").st_mtime_ns
    assert sweep.main([f"--sweep={path}"]) == 0  # Finished: not evaluated again.
    assert os.stat(tmp_path / "runs" / "base_flip" / "seed0" / "results.json").st_mtime_ns == stamp
    # base seed 1 retrained (another training time): its evaluation is redone, seed 0's is not.
    retrained = {**sweep.load_result(bases[1]), "train_seconds": 99.0}
    (tmp_path / "runs" / "base" / "seed1" / "results.json").write_text(json.dumps(retrained))
    assert sweep.main([f"--sweep={path}"]) == 0
    flip = {s: str(tmp_path / "runs" / "base_flip" / f"seed{s}") for s in (0, 1)}
    assert {s: _launches(w) for s, w in flip.items()} == {0: 1, 1: 2}
    assert sweep.load_result(flip[1])["train_seconds"] == 99.0


def test_an_evaluating_row_needs_its_runs_and_evaluation_fields_only(tmp_path, capsys):
    path = _write_eval_sweep(tmp_path)
    assert sweep.main([f"--sweep={path}", "--only=base_flip"]) == 1
    err = capsys.readouterr().err
    seed0 = tmp_path / "runs" / "base" / "seed0"
    assert err == f"error: base_flip seed 0 evaluates {seed0}, which has not finished: train it first\n"
    bad = _write_eval_sweep(tmp_path, flip={"tta": "flip", "num_epochs": 3})
    assert sweep.main([f"--sweep={bad}"]) == 1
    assert capsys.readouterr().err == (
        f"error: {bad}: row base_flip evaluates base's runs: it sets only ('tta',), not ['num_epochs']\n"
    )
    text = (tmp_path / "eval.py").read_text()
    (tmp_path / "eval.py").write_text(text.replace('evaluates="base"', 'evaluates="nope"'))
    assert sweep.main([f"--sweep={bad}"]) == 1
    assert "evaluates='nope' is not an earlier row that trains" in capsys.readouterr().err


def _refuse_training(command, workdir, label):
    raise AssertionError(f"trained {label}, which the record holds")


def test_a_clone_without_the_runs_rewrites_the_same_table_from_the_record(tiny, tmp_path, monkeypatch):
    directory, _ = tiny
    record = json.loads((directory / "sweeps" / "tiny.json").read_text())
    for (row, seed), workdir in _runs(directory).items():
        result = sweep.load_result(workdir)
        entry = record["runs"][f"{row}/seed{seed}"]
        assert entry["test"]["accuracy"] == result["test"]["accuracy"]
        assert (entry["train_seconds"], entry["machine"]) == (result["train_seconds"], result["machine"])
    # Another checkout: the sweep file, the markdown and the record, no run directories.
    path = _write_sweep(tmp_path)
    (tmp_path / "RESULTS.md").write_text(BEFORE.rstrip("\n") + AFTER)
    shutil.copytree(directory / "sweeps", tmp_path / "sweeps")
    monkeypatch.setattr(sweep, "launch", _refuse_training)
    assert sweep.main([f"--sweep={path}"]) == 0
    assert not (tmp_path / "runs").exists()

    def rows(markdown):
        return [
            ln for ln in markdown.read_text().splitlines() if ln.startswith("| `") or " runs finished" in ln
        ]

    assert rows(tmp_path / "RESULTS.md") == rows(directory / "RESULTS.md")
    assert "| `base` | the tiny run (" in (tmp_path / "RESULTS.md").read_text()
    assert json.loads((tmp_path / "sweeps" / "tiny.json").read_text()) == record


def test_a_run_here_comes_before_its_record_entry(tmp_path):
    plan = sweep.Sweep(
        "s",
        "configs/mlp_4x2.py",
        (sweep.Row("a"),),
        root=str(tmp_path / "runs"),
        output=str(tmp_path / "RESULTS.md"),
    )
    entry = {"test": {"accuracy": 0.5}, "train_seconds": 3.0, "machine": "machine B"}
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "s.json").write_text(
        json.dumps({"sweep": "s", "runs": {"a/seed0": entry, "a/seed1": entry}})
    )
    _fake_result(str(tmp_path / "runs"), "a", 1, 0.7)
    assert (
        "| 0.6000 ± 0.1414 | baseline | 2/3 (unfinished) | 7.5 | different machines: machine B (seed 0); machine A (seed 1) |"
        in sweep.sweep_table(plan, [0, 1, 2], "s.py")
    )
    sweep.update_record(plan)
    record = json.loads((tmp_path / "sweeps" / "s.json").read_text())
    assert record == {
        "sweep": "s",
        "runs": {
            "a/seed0": entry,
            "a/seed1": {
                "test": {"accuracy": 0.7},
                "train_seconds": 12.0,
                "machine": "machine A",
                "resumed": False,
            },
        },
    }


def test_a_recorded_evaluation_of_a_run_that_changed_is_forgotten(tmp_path):
    rows = (sweep.Row("a"), sweep.Row("a_flip", {"tta": "flip"}, evaluates="a"))
    plan = sweep.Sweep(
        "s", "configs/mlp_4x2.py", rows, root=str(tmp_path / "runs"), record=str(tmp_path / "r.json")
    )
    run = {"test": {"accuracy": 0.7}, "train_seconds": 5.0, "finished": "today"}
    evaluation = {"test": {"accuracy": 0.8}, "evaluated_run": {"finished": "today", "train_seconds": 5.0}}
    runs = {
        "a/seed0": run,
        "a/seed1": {**run, "finished": "later"},
        "a_flip/seed0": evaluation,
        "a_flip/seed1": evaluation,
    }
    (tmp_path / "r.json").write_text(json.dumps({"sweep": "s", "runs": runs}))
    sweep.drop_stale_evaluations(plan, [0, 1])
    del runs["a_flip/seed1"]  # Seed 1 of `a` is not the run it evaluated.
    assert json.loads((tmp_path / "r.json").read_text())["runs"] == runs


def test_a_malformed_record_is_a_one_line_error(tmp_path, capsys):
    path = _write_sweep(tmp_path)
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "tiny.json").write_text("[]")
    assert sweep.main([f"--sweep={path}"]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith(f"error: {tmp_path / 'sweeps' / 'tiny.json'}: not a sweep record (")
        and err.count("\n") == 1
    )
    assert not (tmp_path / "runs").exists() and (tmp_path / "sweeps" / "tiny.json").read_text() == "[]"
