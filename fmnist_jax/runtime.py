"""What a run needs from its process and machine: signals, provenance, files, caches.

- `PreemptionGuard`: SIGTERM and a first Ctrl-C become a flag the loop polls.
- `machine_description` / `provenance`: what produced a result (devices, CPU model and
  generation, git commit, package versions), recorded next to every result.
- `enable_compilation_cache`: JAX's persistent cache, so a second launch skips compiling.
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import threading
from typing import Any

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PreemptionGuard:
    """Turns SIGTERM and the first SIGINT into a flag the training loop polls between
    dispatches; a second SIGINT raises KeyboardInterrupt (stop at once)."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.interrupted = False  # A second Ctrl-C came.
        self._previous: dict[int, Any] = {}
        self._previous_unraisable = sys.unraisablehook

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
            self._previous_unraisable = sys.unraisablehook
            sys.unraisablehook = self._unraisable
        return self

    def _unraisable(self, info: Any) -> None:
        """A second Ctrl-C raised where Python cannot raise (a gc callback) is the flag's
        to report (see check), not a traceback's."""
        if not (self.interrupted and isinstance(info.exc_value, KeyboardInterrupt)):
            self._previous_unraisable(info)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            self.interrupted = True  # Also a flag: Python drops exceptions raised inside gc callbacks.
            raise KeyboardInterrupt  # A second Ctrl-C stops at once.
        self.signal_name = signal.Signals(signum).name
        # os.write, not print: a handler may interrupt a print to the same stream.
        os.write(2, f"{self.signal_name}: saving at the next step boundary, then stopping".encode())
        os.write(2, b" (Ctrl-C again stops at once, without saving)\n")

    def check(self) -> None:
        """Raises KeyboardInterrupt if a second Ctrl-C came, even one whose exception was lost."""
        if self.interrupted:
            raise KeyboardInterrupt

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._previous:
            sys.unraisablehook = self._previous_unraisable


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def amd_generation(family: int, model: int | None, flags: set[str]) -> str | None:
    """AMD's Zen generation from the CPU family, model number and flags (None: not a
    known Zen)."""
    if family == 26:
        return "Zen 5"
    if family == 25:  # Zen 3 and Zen 4 share the family; only Zen 4 has AVX-512.
        return "Zen 4" if "avx512f" in flags else "Zen 3"
    if family == 23:  # Zen and Zen+ (two 128-bit FMA units) are models below 0x30, Zen 2 above.
        if model is None:
            return "Zen/Zen 2"
        return "Zen 2" if model >= 0x30 else "Zen/Zen+"
    return None


# Intel Xeon server cores (family 6) by model number; client cores are not named.
_INTEL_SERVER_MODELS = {
    0x55: "Skylake-SP/Cascade Lake",
    0x6A: "Ice Lake-SP",
    0x6C: "Ice Lake-SP",
    0x8F: "Sapphire Rapids",
    0xCF: "Emerald Rapids",
    0xAD: "Granite Rapids",
    0xAE: "Granite Rapids",
}


def intel_generation(family: int, model: int | None) -> str | None:
    """Intel's Xeon generation from the CPU family and model number (None: not a known
    Xeon server core)."""
    return _INTEL_SERVER_MODELS.get(model) if family == 6 and model is not None else None


def cpu_generation(vendor: str, family: int | None, model: int | None, flags: set[str]) -> str | None:
    """The generation of an AMD or Intel CPU (None: unknown vendor or model)."""
    if family is None:
        return None
    if vendor == "AuthenticAMD":
        return amd_generation(family, model, flags)
    if vendor == "GenuineIntel":
        return intel_generation(family, model)
    return None


def _number(info: dict[str, str], field: str) -> int | None:
    """An integer field of /proc/cpuinfo ('cpu family', 'model'); None where absent."""
    value = info.get(field, "")
    return int(value) if value.isdigit() else None


def cpu_description() -> str:
    """CPU model, family/model numbers, generation and widest vector unit, e.g.
    'AMD EPYC (family 25 model 17, Zen 4, AVX-512)'."""
    cpu = cpu_features()
    if cpu["family"] is None:
        return cpu["model_name"]
    details = [f"family {cpu['family']} model {'?' if cpu['model'] is None else cpu['model']}"]
    details += [cpu["generation"]] if cpu["generation"] else []
    details.append("AVX-512" if cpu["avx512f"] else "AVX2" if cpu["avx2"] else "no AVX2")
    return f"{cpu['model_name']} ({', '.join(details)})"


def cpu_features() -> dict[str, Any]:
    """The CPU's model name, vendor, family and model numbers, generation (AMD's Zen,
    Intel's Xeon) and the vector flags that decide which kernels run fast: avx2, avx512f,
    avx512_bf16, amx_bf16."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    family, model = _number(info, "cpu family"), _number(info, "model")
    return {
        "model_name": info.get("model name") or platform.processor() or platform.machine(),
        "vendor": info.get("vendor_id", ""),
        "family": family,
        "model": model,
        "generation": cpu_generation(info.get("vendor_id", ""), family, model, flags),
        **{flag: flag in flags for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")},
    }


def machine_description() -> str:
    """The JAX devices and the host this runs on, in one line."""
    devices = jax.devices()
    return (
        f"{len(devices)}x {devices[0].device_kind} ({jax.default_backend()}), "
        f"host {cpu_description()}, {os.cpu_count()} cores"
    )


def git_state(directory: str = ROOT) -> dict[str, Any] | None:
    """{'commit': sha, 'dirty': bool} of the checkout holding this package, or None
    when it is not a git checkout (an installed copy) or git is missing."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=directory, capture_output=True, text=True, timeout=10, check=True
        ).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide a run's numbers."""
    from importlib import metadata

    versions = {}
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def provenance() -> dict[str, Any]:
    """What produced a result: machine, git commit (and dirty tree), package versions."""
    return {"machine": machine_description(), "git": git_state(), "versions": package_versions()}


class WorkdirError(RuntimeError):
    """The workdir cannot be created or written; the message says which and why."""


def prepare_workdir(workdir: str) -> None:
    """Creates `workdir` and proves it writable (a small file written, synced and
    removed), so an unwritable or full disk fails before any training, in one line."""
    probe = os.path.join(workdir, f".write_test.{os.getpid()}")
    try:
        os.makedirs(workdir, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise WorkdirError(f"workdir {workdir} is not writable: {e.strerror or e}") from e
    finally:
        if os.path.exists(probe):
            os.remove(probe)


def compilation_cache_dir(setting: str = "auto") -> str | None:
    """Where compiled programs are kept: `setting` is config.compilation_cache, 'auto'
    ($FMNIST_JAX_COMPILATION_CACHE, else ~/.cache/fmnist_jax/xla), 'off', or a folder.
    The environment variable set to 'off' turns the cache off too."""
    if setting == "auto":
        default = os.path.join(os.path.expanduser("~"), ".cache", "fmnist_jax", "xla")
        setting = os.environ.get("FMNIST_JAX_COMPILATION_CACHE", default)
    return None if setting in ("", "off") else os.path.abspath(os.path.expanduser(setting))


def enable_compilation_cache(setting: str = "auto") -> str | None:
    """Turns on JAX's persistent compilation cache for every program (however fast it
    compiled), so a relaunch (a resume, a rerun, --mode=eval) loads instead of compiling.
    Returns the folder in use, or None when it is off."""
    directory = compilation_cache_dir(setting)
    if directory is None:
        return None
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory
