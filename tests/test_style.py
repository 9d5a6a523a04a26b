"""The package reads in one sitting: no function of fmnist_jax/ or launch.py over 60 lines.

Complexity, branches and statements are ruff's (C901, PLR0912, PLR0915 in `make lint`);
length is checked here, on the source as written.
"""

import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_LINES = 60


def long_functions(paths):
    for path in paths:
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_LINES:
                    yield f"{os.path.relpath(path, ROOT)}:{node.lineno} {node.name} ({length} lines)"


def test_no_function_is_longer_than_sixty_lines():
    paths = glob.glob(os.path.join(ROOT, "fmnist_jax", "**", "*.py"), recursive=True)
    paths.append(os.path.join(ROOT, "launch.py"))
    assert len(paths) > 20
    assert list(long_functions(paths)) == []


def test_the_length_check_sees_a_long_function(tmp_path):
    source = tmp_path / "long.py"
    source.write_text("def f():\n" + "    x = 1\n" * MAX_LINES + "\n\ndef g():\n    return 1\n")
    assert list(long_functions([str(source)])) == [
        f"{os.path.relpath(source, ROOT)}:1 f ({MAX_LINES + 1} lines)"
    ]
