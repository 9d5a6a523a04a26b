"""What a run shows and writes while it trains: a progress bar and per-epoch metrics.

Progress is tqdm's (installed with tensorflow-datasets): rate, ETA and redraw throttling
come with it, and it is drawn only on an interactive terminal. Metrics go to TensorBoard
event files and to `metrics.jsonl`, one JSON record per epoch: event files are keyed by
step and scalar name, while `metrics.jsonl` must be rewritten from the epoch records a
resumed checkpoint holds, so that it always agrees with the run.

The event files are written with the `tensorboard` package's own writer and protocol
buffers, not through TensorFlow (as clu's SummaryWriter does): importing TensorFlow took
about 4 s of every launch on a slow CPU (docs/PERFORMANCE.md, "TensorBoard without
TensorFlow"), and a run needs nothing else from it.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time
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


class SummaryWriter:
    """TensorBoard event files in `logdir`: scalars and PNG images, keyed by step."""

    def __init__(self, logdir: str):
        # tensorboard's EventFileWriter would open its file through TensorFlow's gfile.
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        os.makedirs(logdir, exist_ok=True)
        name = f"events.out.tfevents.{time.time():010.0f}.{socket.gethostname()}.{os.getpid()}"
        self._writer = RecordWriter(open(os.path.join(logdir, name), "wb"))  # noqa: SIM115 (closed in close())
        self._writer.write(
            self._event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString()
        )

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        values = [self._summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
        self._add(step, values)

    def write_pngs(self, step: int, pngs: Mapping[str, bytes]) -> None:
        """Images given as the bytes of PNG files."""
        values = [self._summary.Value(tag=k, image=self._image(png)) for k, png in pngs.items()]
        self._add(step, values)

    def _image(self, png: bytes) -> Any:
        if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
            raise ValueError("not a PNG file")
        width, height, _, color_type = struct.unpack(">IIBB", png[16:26])
        channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(color_type, 3)
        return self._summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=png)

    def _add(self, step: int, values: list) -> None:
        event = self._event(wall_time=time.time(), step=step, summary=self._summary(value=values))
        self._writer.write(event.SerializeToString())

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class MetricsLog:
    """Writes per-epoch scalars to TensorBoard and to `metrics.jsonl`.

    `metrics.jsonl` is rewritten from `records` (the epochs a resumed checkpoint
    holds) so that it always agrees with the checkpoint a run continues from.
    """

    def __init__(self, workdir: str, enabled: bool = True, records: list[dict[str, Any]] | None = None):
        self.enabled = enabled
        self.writer: SummaryWriter | None = None
        if not enabled:
            return
        try:
            self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
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
