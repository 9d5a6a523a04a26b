"""`python -m fmnist_jax.benchmark`: the parent run, or one child's measurement."""

import sys

from fmnist_jax.benchmark.cli import main

sys.exit(main())
