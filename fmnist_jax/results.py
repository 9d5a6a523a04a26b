"""Markdown tables of finished runs, read from their `results.json`.

python -m fmnist_jax.results runs/mlp_256 runs/cnn4 ...
"""

from __future__ import annotations

import json
import os
import sys

# Test accuracy each seed write-up reported for the model a config reproduces.
SEED_REPORTED = {
    "mlp_4x2": "0.80 (0.34 raw pixels)",
    "mlp_20x3": "0.87",
    "mlp_20x4": "0.87",
    "mlp_256": "0.8777",
    "mlp_128": "none given",
    "cnn2_2x2": "0.9122",
    "cnn2_64": "none given",
    "cnn2_dropout": "none given",
    "cnn3_wide": "0.8844",
    "cnn3": "0.9012",
    "cnn4": "0.9156",
}


def load_results(workdir: str) -> dict:
    with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f)


def markdown_table(workdirs: list[str]) -> str:
    """One row per workdir: config, parameters, seed's accuracy, ours, epochs, batch, times, machine."""
    lines = [
        "| config | params | seed's test acc | our test acc | epochs | batch | train time | wall time | machine |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for workdir in workdirs:
        r = load_results(workdir)
        lines.append(
            f"| `{r['config']}` | {r['num_params']:,} | {SEED_REPORTED.get(r['config'], '-')} | "
            f"{r['test']['accuracy']:.4f} | {r['num_epochs']} | {r['batch_size']} | "
            f"{r['train_seconds']:.0f} s | {r['wall_seconds']:.0f} s | {r['machine']} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    missing = [w for w in argv if not os.path.isfile(os.path.join(w, "results.json"))]
    if missing:
        print(f"error: no results.json in {', '.join(missing)}", file=sys.stderr)
        return 1
    print(markdown_table(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
