"""What a run shows and writes while it trains: a progress bar and per-epoch metrics.

Progress is tqdm's (installed with tensorflow-datasets): rate, ETA and redraw throttling
come with it, and it is drawn only on an interactive terminal. Metrics go to TensorBoard
through clu's SummaryWriter and to `metrics.jsonl`, one JSON record per epoch: clu's
writers are keyed by step and scalar name, while `metrics.jsonl` must be rewritten from
the epoch records a resumed checkpoint holds, so that it always agrees with the run.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Any

from tqdm import tqdm


def progress_bar(total: int, done: int, description: str, enabled: bool) -> tqdm:
    """A bar over `total` steps starting at `done`, shown only where stderr is a terminal."""
    return tqdm(
        total=total,
        initial=done,
        desc=description,
        unit="step",
        leave=False,
        dynamic_ncols=True,
        mininterval=0.5,
        disable=not (enabled and sys.stderr.isatty()),
    )


class MetricsLog:
    """Writes per-epoch scalars to TensorBoard (clu) and to `metrics.jsonl`.

    `metrics.jsonl` is rewritten from `records` (the epochs a resumed checkpoint
    holds) so that it always agrees with the checkpoint a run continues from.
    """

    def __init__(self, workdir: str, enabled: bool = True, records: list[dict[str, Any]] | None = None):
        self.enabled = enabled
        self.writer: Any = None
        if not enabled:
            return
        try:  # clu's SummaryWriter writes through TensorFlow.
            from clu import metric_writers

            self.writer = metric_writers.SummaryWriter(os.path.join(workdir, "tensorboard"))
        except ImportError as e:
            print(f"TensorBoard summaries are off ({e}); metrics.jsonl is still written.", file=sys.stderr)
        self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "w")  # noqa: SIM115 (closed in close())
        for record in records or []:
            self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        if self.writer is not None:
            self.writer.write_scalars(step, dict(scalars))
        self.jsonl.write(json.dumps(dict(scalars)) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        if self.enabled and not self.jsonl.closed:
            if self.writer is not None:
                self.writer.close()
            self.jsonl.close()
