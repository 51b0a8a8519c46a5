"""A fresh clone runs from its root with what the lock installs: nothing in the repository shadows an
installed package, and the lock pins every distribution the CPU path installs."""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from helpers import REPO

LOCK = REPO / "constraints-cpu.txt"

BUILD_MODELS = """
import kernels, transformers
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM
small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=2, vocab_size=128)
LlamaForCausalLM(LlamaConfig(**small)); MistralForCausalLM(MistralConfig(**small))
print(kernels.__file__)
"""


def _from_root(*args, timeout=240):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_python_c_at_the_root_builds_llama_and_mistral_with_the_real_kernels_package():
    assert md.distribution("kernels")  # transformers' dependency, installed in site-packages
    out = _from_root("-c", BUILD_MODELS)
    assert out.returncode == 0, out.stderr[-2000:]
    found = Path(out.stdout.strip().splitlines()[-1]).resolve()
    assert found.parent != REPO / "kernels" and "site-packages" in found.parts, f"`import kernels` at the root found {found}"


@pytest.mark.slow
def test_module_entry_points_run_from_the_root():
    out = _from_root("-m", "remix_ds.train", "--help")
    assert out.returncode == 0 and "usage" in out.stdout.lower(), out.stderr[-2000:]
    out = _from_root("-m", "remix_ds.cli", "info")
    assert out.returncode == 0 and "transformers" in out.stdout, out.stderr[-2000:]


def test_no_top_level_name_of_the_repository_is_an_installed_top_level_name():
    """Every folder or module at the root (and tests/, which pytest puts on the path) that Python could
    import is no regular package that shadows an installed one: a folder on sys.path with an
    __init__.py wins over site-packages."""
    installed = set(md.packages_distributions())
    regular = {p.name for p in REPO.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert regular == {"remix_ds"} or regular <= {"remix_ds"}, regular
    for folder in (REPO, REPO / "tests"):
        names = {p.stem for p in folder.glob("*.py")} | {p.name for p in folder.iterdir()
                                                         if p.is_dir() and (p / "__init__.py").exists()}
        assert names & (installed - {"remix_ds"}) == set(), (folder, names & installed)
    # the fast-path folders are namespace portions, reached through remix_ds's symlinks
    for name in ("kernels", "ds_configs"):
        assert not (REPO / name / "__init__.py").exists()
        assert (REPO / "remix_ds" / name).is_symlink() and (REPO / "remix_ds" / name).resolve() == REPO / name


def _lock() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{LOCK.name}: {line!r} is not an exact pin"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_the_lock_pins_every_installed_distribution_of_the_cpu_path():
    """`pip freeze` of this environment (what the README's test command installed) against the lock:
    every distribution is pinned, at the installed version (the venv's own pip aside)."""
    if not LOCK.is_file():
        pytest.fail(f"{LOCK} is missing")
    pins = _lock()
    site = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}
    installed = {}
    for dist in md.distributions():  # those installed in the venv (not copies vendored inside a package)
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
        if name not in ("pip", "remix-ds") and Path(dist.locate_file("")).resolve() in site:
            installed[name] = dist.version
    if os.environ.get("REMIX_DS_LOCK_CHECK") != "1" and not os.environ.get("CI"):
        # a developer's venv may hold extra tools; CI (a fresh venv from the README command) must match exactly
        installed = {k: v for k, v in installed.items() if k in pins}
    missing = sorted(set(installed) - set(pins))
    wrong = sorted(f"{n} {installed[n]} (lock {pins[n]})" for n in installed
                   if n in pins and installed[n].split("+")[0] != pins[n].split("+")[0])
    assert missing == [] and wrong == [], f"not in the lock: {missing}; other versions: {wrong}"
    required = {re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[; ]", r)[0]).lower()
                for r in md.distribution("remix-ds").requires or []}
    assert required - {"flash-attn"} <= set(pins), sorted(required - set(pins))
