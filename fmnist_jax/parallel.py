"""Data parallelism over every device: `jax.jit` over a 1-D mesh, or `jax.pmap`.

`config.batch_size` is the global batch. Every process computes the same global
batch order (a pure function of the seed and epoch); each process feeds only its
rows of every global batch, and `jax.make_array_from_process_local_data`
assembles the global array. So 1 device, 8 devices and several processes see the
same global batches, and only the order of floating-point reductions differs.

- 'jit': the state is replicated (`P()`), the batch sharded `P('data')`; XLA's
  SPMD partitioner inserts the all-reduces (gradients, batch-norm statistics).
- 'pmap': the state carries a leading device axis; gradients, metrics and
  batch-norm statistics are averaged with `lax.pmean` over the axis 'data'.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fmnist_jax.configuration import ConfigError

AXIS = "data"
# A process that stops sending heartbeats is declared lost after this long, and the others
# stop (a collective with it fails at once; a silent hang ends here).
HEARTBEAT_TIMEOUT_SECONDS = 30
MODES = ("jit", "pmap")


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    auto: bool = False,
) -> None:
    """Joins a multi-process JAX run; must come before any other JAX call.

    With `coordinator_address` the three values are explicit (e.g. several CPU or
    GPU processes); with `auto`, JAX detects them (TPU VMs, SLURM, Open MPI).
    """
    if coordinator_address:
        if num_processes is None or process_id is None:
            raise ValueError("--coordinator_address needs --num_processes and --process_id")
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_SECONDS,
        )
    elif auto:
        jax.distributed.initialize(heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_SECONDS)


def is_lost_peer(error: BaseException) -> bool:
    """Whether `error` is a cross-process collective failing because a peer went away."""
    text = str(error)
    return (
        jax.process_count() > 1
        and isinstance(error, jax.errors.JaxRuntimeError)
        and any(s in text for s in ("Gloo", "Connection reset", "Connection closed", "connection closed"))
    )


def lost_peer_message(error: BaseException) -> str:
    """One line for a run whose peer died: who, what failed, how to go on."""
    n, me = jax.process_count(), jax.process_index()
    who = f"process {1 - me}" if n == 2 else "another process"
    return (
        f"process {me}: lost {who} of {n} ({str(error).splitlines()[0]}); stopped. The newest complete "
        "checkpoint stays: rerun every process to resume from it"
    )


class DataParallel:
    """How state and batches are placed, and how steps are compiled, for one mode."""

    def __init__(self, mode: str = "jit", devices: Sequence[jax.Device] | None = None):
        if mode not in MODES:
            raise ConfigError(f"config.parallelism={mode!r}: expected one of {MODES}")
        self.mode = mode
        self.devices = list(devices or jax.devices())
        self.mesh = Mesh(np.asarray(self.devices), (AXIS,))
        self.batch_sharding = NamedSharding(self.mesh, P(AXIS))
        self.replicated = NamedSharding(self.mesh, P())
        self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    @property
    def axis_name(self) -> str | None:
        """The collective axis the model and step use (pmap only)."""
        return AXIS if self.mode == "pmap" else None

    def check_batch_size(self, batch_size: int, field: str = "batch_size") -> None:
        if batch_size % self.num_devices:
            raise ConfigError(
                f"config.{field}={batch_size} is not divisible by the {self.num_devices} devices "
                f"(global batch; use a multiple of {self.num_devices})"
            )

    def local_rows(self, global_batch_size: int) -> slice:
        """This process's rows of every global batch (its devices' share)."""
        per_process = global_batch_size * len(self.local_devices) // self.num_devices
        start = per_process * jax.process_index()
        return slice(start, start + per_process)

    def put_state(self, state: Any) -> Any:
        """Places a single-copy state for this mode's step."""
        if self.mode == "jit":
            return jax.device_put(state, self.replicated)
        return jax.tree_util.tree_map(
            lambda x: jax.make_array_from_process_local_data(
                self.batch_sharding, np.stack([np.asarray(x)] * len(self.local_devices))
            ),
            state,
        )

    def single_copy(self, state: Any) -> Any:
        """The state as one copy (what checkpoints hold): pmap's device axis dropped."""
        if self.mode == "jit":
            return state
        return jax.tree_util.tree_map(_first_copy, state)

    def put_batch(self, arrays: Sequence[np.ndarray]) -> tuple[jax.Array, ...]:
        """Global arrays from this process's rows (a whole global batch in one process)."""
        if self.mode == "pmap":  # A leading per-device axis, sharded the same way.
            arrays = [x.reshape(len(self.local_devices), -1, *x.shape[1:]) for x in arrays]
        return tuple(jax.make_array_from_process_local_data(self.batch_sharding, x) for x in arrays)

    def compile_train_step(
        self, step: Callable[..., Any], state: Any, batch: Sequence[jax.ShapeDtypeStruct], rng: jax.Array
    ) -> Callable[..., Any]:
        """AOT-compiles `step(state, batch, rng)`; `batch` holds global shapes."""
        if self.mode == "jit":
            jitted = jax.jit(
                step,
                in_shardings=(self.replicated, self.batch_sharding, self.replicated),
                out_shardings=(self.replicated, self.replicated),
                donate_argnums=0,
            )
            return jitted.lower(state, tuple(batch), rng).compile()
        n = self.num_devices
        pmapped = jax.pmap(step, axis_name=AXIS, in_axes=(0, 0, None), donate_argnums=0)
        shaped = tuple(jax.ShapeDtypeStruct((n, b.shape[0] // n, *b.shape[1:]), b.dtype) for b in batch)
        compiled = pmapped.lower(state, shaped, rng).compile()

        def run(state: Any, batch: Any, rng: jax.Array) -> Any:
            state, metrics = compiled(state, batch, rng)
            return state, jax.tree_util.tree_map(_first_copy, metrics)

        return run

    def put_dataset(self, arrays: Sequence[np.ndarray]) -> tuple[jax.Array, ...]:
        """A whole split, copied once onto every device (for `compile_train_chunk`)."""
        return tuple(jax.device_put(x, self.replicated) for x in arrays)

    def compile_train_chunk(
        self,
        step: Callable[..., Any],
        state: Any,
        data: Sequence[jax.Array | jax.ShapeDtypeStruct],
        num_steps: int,
        batch_size: int,
        rng: jax.Array,
    ) -> Callable[..., Any]:
        """AOT-compiles `num_steps` applications of `step` as one `lax.scan`.

        The program takes (state, data, indices, rng): `data` is the device-resident
        split from `put_dataset` (its shapes are enough to compile), `indices` an
        int32 (num_steps, batch_size) array of example rows. Each step gathers its
        batch on the device, shards it over the mesh like `put_batch` does, and runs
        `step` on it; the metrics come back stacked along a leading step axis. jit
        mode, one process.
        """
        if self.mode != "jit" or jax.process_count() > 1:
            raise ConfigError(
                "config.steps_per_dispatch > 1 needs config.parallelism='jit' in a single process; "
                "set config.steps_per_dispatch=1"
            )
        sharding = self.batch_sharding

        def chunk(state: Any, data: Any, indices: jax.Array, rng: jax.Array) -> Any:
            def body(state: Any, idx: jax.Array) -> Any:
                batch = jax.lax.with_sharding_constraint(tuple(x[idx] for x in data), sharding)
                batch = jax.lax.optimization_barrier(batch)
                return step(state, batch, rng)

            return jax.lax.scan(body, state, indices)

        jitted = jax.jit(
            chunk,
            in_shardings=(self.replicated, self.replicated, self.replicated, self.replicated),
            out_shardings=(self.replicated, self.replicated),
            donate_argnums=0,
        )
        indices = jax.ShapeDtypeStruct((num_steps, batch_size), jnp.int32)
        return jitted.lower(state, tuple(data), indices, rng).compile()

    def compile_eval_step(self, step: Callable[..., Any]) -> Callable[..., Any]:
        """`step(state, batch) -> sums`, summed over devices to one copy."""
        if self.mode == "jit":
            return jax.jit(step, in_shardings=(self.replicated, self.batch_sharding))
        pmapped = jax.pmap(lambda s, b: jax.lax.psum(step(s, b), AXIS), axis_name=AXIS)

        def run(state: Any, batch: Any) -> Any:
            return jax.tree_util.tree_map(_first_copy, pmapped(state, batch))

        return run


def _first_copy(x: jax.Array) -> jax.Array:
    """This process's first copy of an array with a leading per-device axis."""
    return x.addressable_shards[0].data.reshape(x.shape[1:])


def all_finite(tree: Any) -> jax.Array:
    """Whether every leaf of `tree` is finite (one reduction per leaf)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))
