"""Checks a config before anything is loaded or compiled."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.util
import json
import os
from collections.abc import Sequence
from typing import Any

import ml_collections

from fmnist_jax import augment, input_pipeline, models

OPTIMIZERS = ("adam", "adamw", "sgd")
PARALLELISM = ("jit", "pmap")
SCHEDULES = ("constant", "exponential", "cosine", "warmup_cosine", "one_cycle", "warmup_linear")


class ConfigError(ValueError):
    """A config field holds a value the library cannot use; the message names it."""


def _need(config: ml_collections.ConfigDict, ok: bool, field: str, why: str) -> None:
    """Raises ConfigError for `field` (dotted) with its value, unless `ok`."""
    if not ok:
        value = config
        for part in field.split("."):
            value = value[part]
        raise ConfigError(f"config.{field}={value!r}: {why}")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first field whose value is unusable."""
    _check_model(config)
    _check_run(config)
    _check_optimisation(config)
    _check_augmentation(config)
    num_train = input_pipeline.num_train_examples(config.validation_fraction)
    _need(config, config.batch_size <= num_train, "batch_size", f"exceeds the {num_train} training examples")


def _check_model(config: ml_collections.ConfigDict) -> None:
    """config.model's fields, by the checks of its family in models.py."""
    models.check_model_config(config.model, functools.partial(_need, config))


def _check_run(config: ml_collections.ConfigDict) -> None:
    """Devices, dispatch, data, checkpoints, time-to-accuracy."""
    need = functools.partial(_need, config)
    need(config.parallelism in PARALLELISM, "parallelism", f"expected one of {PARALLELISM}")
    need(
        config.compute_dtype in models.COMPUTE_DTYPES,
        "compute_dtype",
        f"expected one of {tuple(models.COMPUTE_DTYPES)}",
    )
    need(config.batch_size >= 1, "batch_size", "must be >= 1")
    need(config.steps_per_dispatch >= 0, "steps_per_dispatch", "must be >= 0 (0: sized by time)")
    need(
        config.steps_per_dispatch <= 1 or config.parallelism == "jit",
        "steps_per_dispatch",
        "scanned steps need parallelism='jit' (pmap runs step by step: use 0 or 1)",
    )
    need(config.eval_batch_size >= 1, "eval_batch_size", "must be >= 1")
    need(0.0 < config.validation_fraction < 1.0, "validation_fraction", "must be in (0, 1)")
    need(config.checkpoint_every_epochs >= 1, "checkpoint_every_epochs", "must be >= 1")
    need(config.checkpoint_every_steps >= 0, "checkpoint_every_steps", "must be >= 0 (0: off)")
    need(0.0 <= config.stop_at_test_accuracy <= 1.0, "stop_at_test_accuracy", "must be in [0, 1] (0: off)")
    need(
        not config.stop_at_test_accuracy or config.test_every_epoch,
        "stop_at_test_accuracy",
        "needs config.test_every_epoch=True",
    )


def _check_augmentation(config: ml_collections.ConfigDict) -> None:
    """Training and test-time augmentation."""
    need = functools.partial(_need, config)
    need(
        not (config.alternate_flip and config.augment_flip),
        "alternate_flip",
        "is a flip scheme of its own: set augment_flip=False",
    )
    need(0 <= config.augment_translate <= 14, "augment_translate", "must be in [0, 14] pixels")
    need(0 <= config.augment_cutout <= 28, "augment_cutout", "must be in [0, 28] pixels")
    need(config.tta in augment.TTA_MODES, "tta", f"expected one of {augment.TTA_MODES}")
    need(0 <= config.tta_shift <= 14, "tta_shift", "must be in [0, 14] pixels")


def _check_optimisation(config: ml_collections.ConfigDict) -> None:
    """Optimizer, schedule and the learning-rate range test."""
    need = functools.partial(_need, config)
    need(config.optimizer in OPTIMIZERS, "optimizer", f"unknown optimizer, expected one of {OPTIMIZERS}")
    need(config.schedule in SCHEDULES, "schedule", f"unknown schedule, expected one of {SCHEDULES}")
    need(config.num_epochs >= 1, "num_epochs", "must be >= 1")
    need(config.learning_rate > 0, "learning_rate", "must be > 0")
    need(config.weight_decay >= 0, "weight_decay", "must be >= 0")
    need(0.0 <= config.ema_decay < 1.0, "ema_decay", "must be in [0, 1) (0: off)")
    need(0.0 <= config.label_smoothing < 1.0, "label_smoothing", "must be in [0, 1)")
    need(config.warmup_epochs >= 0, "warmup_epochs", "must be >= 0")
    need(0.0 <= config.final_lr_fraction <= 1.0, "final_lr_fraction", "must be in [0, 1]")
    need(config.lr_find_min > 0, "lr_find_min", "must be > 0")
    need(config.lr_find_max > config.lr_find_min, "lr_find_max", "must be > lr_find_min")
    need(config.lr_find_steps >= 10, "lr_find_steps", "must be >= 10")
    need(config.epochs_per_decade != 0, "epochs_per_decade", "must not be 0")
    if config.schedule == "one_cycle":
        need(config.warmup_epochs > 0, "warmup_epochs", "one_cycle needs a rising phase > 0")


# Fields that cannot change a run's results: a workdir may be resumed with them changed.
NEUTRAL_FIELDS = frozenset(
    {
        "name",
        "data_dir",
        "write_report",
        "eval_batch_size",
        "steps_per_dispatch",
        "compilation_cache",
        "checkpoint_every_epochs",
        "checkpoint_every_steps",
        "lr_find_min",
        "lr_find_max",
        "lr_find_steps",
        "best_of_n",
        "best_of_n_sequential_baseline",
        "allow_config_change",
    }
)
# Fields `allow_config_change` may name: num_epochs, only where the schedule does not
# depend on the run's length (constant and exponential rates are per step or per epoch).
LENGTH_FREE_SCHEDULES = ("constant", "exponential")


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_fields(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Fields (dotted) whose JSON values differ: {field: (saved, current)}; absent is None."""
    old, new = _flatten(saved), _flatten(current)
    return {k: (old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)}


def check_resume_config(saved: dict[str, Any], config: ml_collections.ConfigDict, workdir: str) -> None:
    """Raises ConfigError when `config` would continue `workdir`'s run (saved config
    `saved`) under settings that change its results: one workdir, one experiment."""
    current = json.loads(config.to_json_best_effort())
    allowed = {f for f in str(config.allow_config_change).split(",") if f}
    changes = {k: v for k, v in changed_fields(saved, current).items() if k not in NEUTRAL_FIELDS}
    unsafe = allowed - {"num_epochs"}
    if unsafe or ("num_epochs" in allowed and config.schedule not in LENGTH_FREE_SCHEDULES):
        raise ConfigError(
            f"config.allow_config_change={config.allow_config_change!r}: only num_epochs may be allowed "
            f"to change, and only with a schedule in {LENGTH_FREE_SCHEDULES} (it is {config.schedule!r})"
        )
    refused = {k: v for k, v in changes.items() if k not in allowed}
    if refused:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise ConfigError(
            f"{workdir} holds a run with another config ({listed}); resuming it would mix two "
            "experiments. Use a new --workdir"
            + (
                ", or --config.allow_config_change=num_epochs to train it longer"
                if "num_epochs" in refused and config.schedule in LENGTH_FREE_SCHEDULES
                else ""
            )
        )


def _closest(name: str, candidates: Sequence[str]) -> str:
    match = difflib.get_close_matches(name, list(candidates), n=1)
    return f"; did you mean {match[0]!r}?" if match else ""


def _config_path(argv: Sequence[str]) -> str | None:
    return next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)


def missing_config_file(argv: Sequence[str]) -> str | None:
    """'--config=PATH: no such file' with the closest config beside it, or None."""
    path = _config_path(argv)
    if path is None or os.path.isfile(path):
        return None
    folder = os.path.dirname(path) or "."
    names = sorted(f for f in os.listdir(folder) if f.endswith(".py")) if os.path.isdir(folder) else []
    return f"--config={path}: no such file{_closest(os.path.basename(path), names)}"


def explain_flag_error(argv: Sequence[str]) -> str | None:
    """One line naming what a command line asked for that does not exist (a config file,
    a field an override names), with the closest existing name; None if nothing is."""
    path = _config_path(argv)
    if path is None or not os.path.isfile(path):
        return missing_config_file(argv)
    spec = importlib.util.spec_from_file_location("_config_file", path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for arg in argv:
        if arg.startswith("--config."):
            dotted = arg[len("--config.") :].split("=", 1)[0]
            missing = _missing_field(config, dotted)
            if missing:
                return f"{arg.split('=', 1)[0]}: {path} {missing}{_model_field_hint(config, dotted)}"
    return None


def _missing_field(config: Any, dotted: str) -> str | None:
    """What is wrong with the field path `dotted` in `config`, or None if it exists."""
    node, walked = config, list[str]()
    for part in dotted.split("."):
        if not hasattr(node, "keys") or part not in node:
            where = ".".join(walked) or "the config"
            fields = list(node.keys()) if hasattr(node, "keys") else []
            listing = f" ({where} has {', '.join(sorted(fields))})" if len(fields) <= 12 else ""
            return f"has no field {dotted!r}{listing}{_closest(part, fields)}"
        node, walked = node[part], [*walked, part]
    return None


def _model_field_hint(config: Any, dotted: str) -> str:
    """For a model field the network takes but the config file does not set: how to set it."""
    parts = dotted.split(".")
    module = models.MODEL_CLASSES.get(config.model.get("name")) if "model" in config else None
    if len(parts) != 2 or parts[0] != "model" or module is None:
        return ""
    if parts[1] not in {f.name for f in dataclasses.fields(module)}:
        return ""
    return f"; the {config.model.name} model takes {parts[1]}: set it in a copy of the config file"
