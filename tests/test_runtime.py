"""Provenance of results, the CPU's generation, and the persistent compilation cache."""

import json
import os
import subprocess
import sys

import pytest

from fmnist_jax import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    ("family", "model", "flags", "expected"),
    [
        (26, 2, {"avx512f", "avx2"}, "Zen 5"),
        (25, 17, {"avx512f", "avx2"}, "Zen 4"),
        (25, 1, {"avx2"}, "Zen 3"),
        (23, 49, {"avx2"}, "Zen 2"),  # EPYC 7002 (Rome): model 0x31.
        (23, 1, {"avx2"}, "Zen/Zen+"),  # EPYC 7001 (Naples).
        (23, None, {"avx2"}, "Zen/Zen 2"),
        (6, 85, set(), None),
    ],
)
def test_amd_generation_from_family_model_and_flags(family, model, flags, expected):
    assert runtime.amd_generation(family, model, flags) == expected


@pytest.mark.parametrize(
    ("vendor", "family", "model", "expected"),
    [
        ("GenuineIntel", 6, 207, "Emerald Rapids"),  # 5th-generation Xeon: model 0xCF.
        ("GenuineIntel", 6, 143, "Sapphire Rapids"),  # 4th generation: 0x8F.
        ("GenuineIntel", 6, 85, "Skylake-SP/Cascade Lake"),
        ("GenuineIntel", 6, 158, None),  # A client core (Coffee Lake): not named.
        ("GenuineIntel", 6, None, None),
        ("AuthenticAMD", 25, 17, "Zen 4"),
        ("AuthenticAMD", 6, 207, None),
        ("SomeOtherVendor", 6, 207, None),
    ],
)
def test_cpu_generation_by_vendor(vendor, family, model, expected):
    assert runtime.cpu_generation(vendor, family, model, {"avx512f", "avx2"}) == expected


def test_cpu_description_names_family_model_and_vector_width():
    info = runtime._cpuinfo()
    if "cpu family" not in info:
        pytest.skip("no /proc/cpuinfo on this machine")
    description = runtime.cpu_description()
    assert description.startswith(info["model name"])
    assert f"family {info['cpu family']} model {info['model']}" in description
    flags = info["flags"].split()
    assert ("AVX-512" in description) == ("avx512f" in flags)


def test_git_state_is_this_checkout(tmp_path):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
    )
    assert runtime.git_state() == {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}
    assert runtime.git_state(str(tmp_path)) is None  # Not a checkout: no commit to name.


def test_second_launch_compiles_nothing_new_and_records_provenance(tmp_path):
    """Two launches of the same tiny config with one cache folder: the first fills it,
    the second adds nothing (every program came from the cache) and ends with the
    same results; results.json names the commit, versions and CPU."""
    cache = tmp_path / "cache"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "FMNIST_JAX_COMPILATION_CACHE": str(cache)}

    def launch(workdir):
        args = ["--config=configs/cnn2_64.py", "--config.model.conv_features=(4,8)", "--config.num_epochs=1"]
        args += ["--config.validation_fraction=0.99", "--config.write_report=False", f"--workdir={workdir}"]
        proc = subprocess.run(
            [sys.executable, "launch.py", *args], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        with open(workdir / "results.json") as f:
            return json.load(f), sorted(os.listdir(cache))

    first, after_first = launch(tmp_path / "a")
    second, after_second = launch(tmp_path / "b")
    assert len(after_first) >= 3  # Init, the train chunk, the eval step at least.
    assert after_second == after_first
    assert second["test"] == first["test"]
    assert (
        first["git"] == runtime.git_state() and first["versions"]["jax"] == runtime.package_versions()["jax"]
    )
    assert runtime.cpu_description() in first["machine"]


def test_cache_setting_off_and_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("FMNIST_JAX_COMPILATION_CACHE", "off")
    assert runtime.compilation_cache_dir("auto") is None
    assert runtime.compilation_cache_dir(str(tmp_path)) == str(tmp_path)
    monkeypatch.delenv("FMNIST_JAX_COMPILATION_CACHE")
    assert runtime.compilation_cache_dir("auto").endswith(os.path.join(".cache", "fmnist_jax", "xla"))
    assert runtime.compilation_cache_dir("off") is None
