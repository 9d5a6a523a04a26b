import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import concurrent.futures
import importlib
import subprocess

import pytest

from fmnist_jax import input_pipeline


def load_config(name):
    """A fresh copy of configs/<name>.py's config (tests import this one loader)."""
    return importlib.import_module(f"configs.{name}").get_config()


@pytest.fixture(scope="session")
def splits() -> dict[str, input_pipeline.Split]:
    """The real prepared dataset with the default 10% validation carve."""
    return input_pipeline.load_splits(validation_fraction=0.1, split_seed=0)


def read_until(proc: subprocess.Popen, prefix: str) -> str:
    """Reads a process's output up to its first line starting with `prefix`; returns all
    of it read so far. If the process ends first, fails showing what it printed."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(prefix):
            return "".join(seen)
    proc.wait()
    pytest.fail(f"exited {proc.returncode} before printing {prefix!r}:\n{''.join(seen)}")


def rest_of_output(proc: subprocess.Popen, timeout: float) -> str:
    """The rest of a process's output once it exits, through the same buffered reader as
    read_until (communicate reads the raw pipe and loses what that reader holds)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        reading = pool.submit(proc.stdout.read)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        return reading.result()


def operand_dtypes(jaxpr, primitive: str) -> list[tuple[str, ...]]:
    """The operand dtypes, then the result's, of each application of `primitive` in a
    (closed) jaxpr, a sub-jaxpr's at each of its calls."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == primitive:
            found.append(tuple(str(v.aval.dtype) for v in (*eqn.invars, *eqn.outvars)))
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                if hasattr(getattr(sub, "jaxpr", sub), "eqns"):
                    found += operand_dtypes(sub, primitive)
    return found


def convolution_input_dtypes(jaxpr) -> list[tuple[str, ...]]:
    """The two operands' dtypes of each convolution in a jaxpr: XLA's, or oneDNN's (an
    `ffi_call`, under model.conv_op='auto' where oneDNN loads)."""
    return [d[:2] for name in ("conv_general_dilated", "ffi_call") for d in operand_dtypes(jaxpr, name)]
