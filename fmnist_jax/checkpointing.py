"""Orbax checkpoints: save, exact resume, restore for evaluation, corruption handling.

A checkpoint holds two items: `state` (params, batch_stats, optimizer state, step)
and `progress` (JSON: the epoch records so far, partial sums of the epoch in
progress, training seconds). The data order and all randomness are pure functions
of (config.seed, step), so these two items are everything an exact resume needs.

Kept on disk: the two newest checkpoints and the best by validation accuracy.
Mid-epoch checkpoints (preemption, `checkpoint_every_steps`) carry no validation
result; they are recorded with `validation_accuracy = -1` so they never rank best.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

CHECKPOINT_DIR = "checkpoints"
NOT_EVALUATED = -1.0


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: missing, corrupt, or of another architecture."""


def _validation_accuracy(metrics: Any) -> float:
    return float(metrics["validation_accuracy"])


def checkpoint_dir(workdir: str) -> str:
    return os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))


def create_manager(workdir: str, create: bool = True) -> ocp.CheckpointManager:
    """An async CheckpointManager keeping the two newest and the best checkpoint."""
    policy = policies.AnyPreservationPolicy(
        [
            # Two newest, so that a damaged newest checkpoint still leaves one to resume from.
            policies.LatestN(n=2),
            policies.BestN(get_metric_fn=_validation_accuracy, n=1, keep_checkpoints_without_metrics=False),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        best_fn=_validation_accuracy,  # Also makes orbax store the metrics on disk.
        best_mode="max",
        preservation_policy=policy,
        enable_async_checkpointing=True,
        create=create,
    )
    return ocp.CheckpointManager(
        checkpoint_dir(workdir),
        options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(), "progress": ocp.JsonCheckpointHandler()},
    )


def save(
    manager: ocp.CheckpointManager,
    state: Any,
    progress: dict[str, Any],
    validation_accuracy: float = NOT_EVALUATED,
) -> None:
    """Starts an asynchronous save of `state` and `progress` at `state.step`."""
    step = int(state.step)
    manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress)),
        metrics={"validation_accuracy": float(validation_accuracy)},
        force=True,
    )


def _path_str(path: tuple[Any, ...]) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def check_compatible(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
    """Raises CheckpointError naming the first parameter whose shape differs."""
    saved = manager.item_metadata(step)["state"]
    saved_params = {
        _path_str(p): tuple(m.shape) for p, m in jax.tree_util.tree_flatten_with_path(saved["params"])[0]
    }
    ours = {
        _path_str(p): tuple(np.shape(x)) for p, x in jax.tree_util.tree_flatten_with_path(state.params)[0]
    }
    for name, shape in ours.items():
        if name not in saved_params:
            raise CheckpointError(
                f"checkpoint {step} in {manager.directory} has no parameter params/{name} "
                f"(this config's has shape {shape}): it is of another architecture"
            )
        if saved_params[name] != shape:
            raise CheckpointError(
                f"checkpoint {step} in {manager.directory}: parameter params/{name} has shape "
                f"{saved_params[name]}, this config's has {shape}: it is of another architecture"
            )
    extra = sorted(set(saved_params) - set(ours))
    if extra:
        raise CheckpointError(
            f"checkpoint {step} in {manager.directory} has parameter params/{extra[0]} that this "
            "config lacks: it is of another architecture"
        )


def restore(
    manager: ocp.CheckpointManager, step: int, state: Any, sharding: jax.sharding.Sharding | None = None
) -> tuple[Any, dict[str, Any]]:
    """Restores (state, progress) of `step`, shaped like the single-copy `state`.

    Each leaf is placed with `sharding` (default: this process's first device),
    whatever devices the checkpoint was saved from.
    """
    check_compatible(manager, step, state)
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state
    )
    restored = manager.restore(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardRestore(target), progress=ocp.args.JsonRestore()),
    )
    return restored["state"], dict(restored["progress"])


def restore_latest_intact(
    manager: ocp.CheckpointManager, state: Any, workdir: str, sharding: jax.sharding.Sharding | None = None
) -> tuple[Any, dict[str, Any]] | None:
    """Restores the newest checkpoint that reads back intact, or None if there is none.

    A checkpoint that fails to read (truncated or half-written) is moved aside to
    `checkpoints/corrupt_<step>` with a warning and the next older one is tried;
    other checkpoints are left untouched. Architecture mismatches are raised.
    """
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            return restore(manager, step, state, sharding)
        except CheckpointError:
            raise
        except Exception as e:  # Orbax/tensorstore raise many types for damaged files.
            aside = os.path.join(checkpoint_dir(workdir), f"corrupt_{step}")
            logging.warning("checkpoint %d is unreadable (%s); moved to %s", step, e, aside)
            print(
                f"warning: checkpoint {step} is unreadable ({type(e).__name__}); moved it to {aside} "
                "and trying an older one",
                flush=True,
            )
            if jax.process_index() == 0:
                shutil.move(os.path.join(checkpoint_dir(workdir), str(step)), aside)
            manager.reload()
    return None


def select_step(manager: ocp.CheckpointManager, which: str) -> int:
    """The step `which` names: 'best', 'latest' or a step number present on disk."""
    steps = manager.all_steps()
    if not steps:
        raise CheckpointError(f"no checkpoints in {manager.directory}")
    if which == "latest":
        return int(max(steps))
    if which == "best":
        best = manager.best_step()
        return int(best if best is not None else max(steps))
    if not which.isdigit() or int(which) not in steps:
        raise CheckpointError(
            f"--checkpoint={which!r}: expected 'best', 'latest' or one of the saved steps {sorted(steps)}"
        )
    return int(which)
