"""Entry point: parses flags and hands over to the library (fmnist_jax.train).

    python launch.py --config=configs/cnn4.py [--workdir=runs/cnn4] [--config.num_epochs=3]
    python launch.py --mode=eval --workdir=runs/cnn4 [--checkpoint=best|latest|STEP] [--tta=none]
    python launch.py --mode=ensemble --workdir=runs/a --workdir=runs/b [--output=runs/ensemble.json]
    python launch.py --mode=lr_find --config=configs/mlp_4x2.py [--workdir=runs/lr_find]
    python launch.py --mode=predict --workdir=runs/cnn4 --image=a.png [--image=b.jpg ...]
    python launch.py --mode=best_of_n --config=configs/cnn2_dropout.py [--config.best_of_n=4]
    python launch.py --config=... --coordinator_address=HOST:PORT --num_processes=N --process_id=I

Training resumes from the newest checkpoint in the workdir. All logic lives in
importable, tested library code; this file only parses flags.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging
from ml_collections import config_flags

from fmnist_jax import augment, configuration, input_pipeline

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/cnn4.py; fields overridable as --config.FIELD=VALUE."
)
_MODE = flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "eval", "lr_find", "predict", "best_of_n", "ensemble"],
    "train (or resume); eval a checkpoint; lr_find: learning-rate range test; predict --image files; "
    "best_of_n: config.best_of_n models on different validation carves at once, keep the best; "
    "ensemble: eval the mean of the logits of several --workdir runs.",
)
_IMAGES = flags.DEFINE_multi_string("image", [], "predict: an image file (repeat for several).")
_WORKDIR = flags.DEFINE_multi_string(
    "workdir", [], "Output directory (train default: runs/<config name>); ensemble: repeat for each member."
)
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", "best", "eval, predict, ensemble: 'best', 'latest' or a step number."
)
_TTA = flags.DEFINE_enum(
    "tta",
    None,
    list(augment.TTA_MODES),
    "eval, ensemble: this test-time augmentation instead of the one each run trained with.",
)
_OUTPUT = flags.DEFINE_string("output", "runs/ensemble.json", "ensemble: where its report (JSON) goes.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Join a multi-process run, detected by JAX (TPU VMs, SLURM, Open MPI)."
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-process: host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process: how many processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process: this process's index.")


# What a run may stop with: one line on stderr, exit status 1, no traceback.
def _user_errors() -> tuple[type[Exception], ...]:
    from fmnist_jax import checkpointing, runtime

    return (
        runtime.WorkdirError,
        checkpointing.CheckpointError,
        configuration.ConfigError,
        input_pipeline.DatasetNotFoundError,
        FloatingPointError,
    )


def single_workdir() -> str | None:
    """The --workdir of every mode but ensemble, which alone takes several."""
    if len(_WORKDIR.value) > 1:
        raise app.UsageError(
            f"--workdir given {len(_WORKDIR.value)} times: only --mode=ensemble takes several"
        )
    return _WORKDIR.value[0] if _WORKDIR.value else None


def predict_mode() -> None:
    workdir = single_workdir()
    if not workdir or not _IMAGES.value:
        raise app.UsageError("--mode=predict needs --workdir (a training run) and at least one --image")
    from fmnist_jax import predict

    results = predict.predict_files(workdir, _IMAGES.value, _CHECKPOINT.value)
    print(predict.format_results(results))
    if any("error" in r for r in results):
        sys.exit(1)


def eval_mode() -> None:
    workdir = single_workdir()
    if not workdir:
        raise app.UsageError("--mode=eval needs --workdir (the training run's directory)")
    from fmnist_jax import evaluate

    evaluate.evaluate_checkpoint(workdir, _CHECKPOINT.value, _TTA.value)


def ensemble_mode() -> None:
    from fmnist_jax import ensemble

    ensemble.evaluate_ensemble(_WORKDIR.value, _CHECKPOINT.value, _OUTPUT.value, _TTA.value)


def training_mode(mode: str) -> None:
    """train, lr_find or best_of_n on --config, in --workdir (default runs/<config name>)."""
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required for training, e.g. --config=configs/cnn4.py")
    configuration.validate_config(config)  # Before the heavy imports: bad input fails fast.
    name = os.path.splitext(os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"])))[0]
    workdir = single_workdir() or os.path.join("runs", name)
    if mode == "best_of_n":
        from fmnist_jax import best_of_n

        best_of_n.best_of_n(config, workdir)
    elif mode == "lr_find":
        from fmnist_jax import lr_finder

        lr_finder.find_learning_rate(config, workdir)
    else:
        from fmnist_jax import train

        train.train_and_evaluate(config, workdir)


def run_mode(mode: str) -> None:
    """Hands --mode over to the library."""
    if mode == "predict":
        predict_mode()
    elif mode == "eval":
        eval_mode()
    elif mode == "ensemble":
        ensemble_mode()
    else:
        training_mode(mode)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Library INFO chatter off; --verbosity=0 brings it back.
    from fmnist_jax import parallel

    try:
        parallel.initialize_distributed(
            _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _DISTRIBUTED.value
        )
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    try:
        run_mode(_MODE.value)
    except _user_errors() as e:
        sys.exit(f"error: {e}")
    except Exception as e:
        if not parallel.is_lost_peer(e):
            raise
        # One line, then out at once: JAX's exit-time barrier would wait for the lost peer.
        print(f"error: {parallel.lost_peer_message(e)}", file=sys.stderr, flush=True)
        os._exit(1)
    except KeyboardInterrupt:  # A second Ctrl-C: stop at once; the newest checkpoint stays.
        print("interrupted: stopped without saving", file=sys.stderr, flush=True)
        sys.exit(130)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing; a config file or field that does not exist is one line, not a traceback."""
    try:
        remaining = flags.FLAGS(argv)
    except Exception as e:
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        sys.exit(f"error: {configuration.explain_flag_error(argv) or first_line}")
    missing = configuration.missing_config_file(argv)  # config_flags defers this one.
    if missing:
        sys.exit(f"error: {missing}")
    return remaining


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
