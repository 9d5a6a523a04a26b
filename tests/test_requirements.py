"""requirements.txt names every package the library imports, so a fresh machine has them all.

A package that only arrives as another's dependency can leave with that dependency, or be
missing where the other is not installed (tqdm came with tensorflow-datasets alone).
"""

import ast
import glob
import importlib.metadata
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Imported only where installed, as README says: the benchmark's PyTorch peer.
OPTIONAL = {"torch"}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_packages(paths: list[str]) -> set[str]:
    """The top-level names of the absolute imports in `paths`, less the standard library
    and this repository's own packages."""
    names = set()
    for path in paths:
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"__future__", "fmnist_jax", "configs"}


def required(path: str) -> set[str]:
    """The distributions a requirements file names, normalized."""
    with open(path) as f:
        lines = (line.split("#")[0].strip() for line in f)
        return {normalized(re.split(r"[=<>!~\[ ;]", line)[0]) for line in lines if line}


def undeclared(paths: list[str], requirements: str) -> list[str]:
    """Each imported package whose distributions are not in `requirements` (or, not
    installed here, has no distribution to look up), less OPTIONAL."""
    distributions = importlib.metadata.packages_distributions()
    named = required(requirements)
    return sorted(
        package
        for package in imported_packages(paths) - OPTIONAL
        if not {normalized(d) for d in distributions.get(package, [])} & named
    )


def library_files() -> list[str]:
    paths = glob.glob(os.path.join(ROOT, "fmnist_jax", "**", "*.py"), recursive=True)
    paths += glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True)
    return [*paths, os.path.join(ROOT, "launch.py")]


def test_every_package_the_library_imports_is_in_requirements():
    paths = library_files()
    assert {"jax", "flax", "optax", "orbax", "tqdm", "PIL"} <= imported_packages(paths)
    assert undeclared(paths, os.path.join(ROOT, "requirements.txt")) == []


def test_the_check_sees_a_package_that_comes_only_with_another(tmp_path):
    source = tmp_path / "uses.py"
    source.write_text("import json\nimport numpy as np\nfrom PIL import Image\nfrom . import sibling\n")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# pinned\nnumpy==2.4.6\nmatplotlib==3.11.2  # brings pillow\n")
    assert undeclared([str(source)], str(requirements)) == ["PIL"]
    requirements.write_text("numpy==2.4.6\nPillow>=10\n")
    assert undeclared([str(source)], str(requirements)) == []
