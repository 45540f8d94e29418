"""The CPU allocator policy (`cpu_malloc`): what `retain` changes is measured (minor page faults
when a large freed block is allocated again), in a fresh process so the policy of the test
process itself does not matter."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from darht.config import make_config
from darht.engine import malloc
from darht.engine.setup import configure_backends

PROBE = r"""
import json, resource, sys, torch
from darht.engine.malloc import set_cpu_malloc, applied
def faults_of_reuse():
    n = 16 * 2**20                      # 64 MiB of float32: above glibc's largest mmap threshold
    torch.empty(n).fill_(1.0)           # allocated, touched, freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(n).fill_(2.0)           # the same size again
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
out = {"system": faults_of_reuse()}
out["applied"] = set_cpu_malloc(sys.argv[1])
out["policy"] = applied()
out["after"] = [faults_of_reuse() for _ in range(8)]  # aligned blocks: the heap settles in a few rounds
print(json.dumps(out))
"""


def probe(policy: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, policy], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_retain_reuses_freed_memory_instead_of_faulting_it_in_again() -> None:
    """On the project's platform (Linux, glibc: the CI image and every machine it was built on);
    without mallopt `retain` is a no-op, tested below with mallopt taken away."""
    assert malloc._mallopt() is not None, "glibc's mallopt not found: this test needs Linux with glibc"
    pages = 64 * 2**20 // 4096
    out = probe("retain")
    assert out["applied"] and out["policy"] == "retain"
    assert out["system"] > pages // 2       # glibc's default: a fresh mmap, every page faulted in
    assert max(out["after"][-3:]) < pages // 20  # retained: once the heap has settled, blocks are reused
    plain = probe("system")
    assert plain["applied"] and plain["policy"] == "system"
    assert min(plain["after"]) > pages // 2      # `system` changes nothing


def test_retain_without_mallopt_says_so_once_and_changes_nothing(monkeypatch, capsys) -> None:
    monkeypatch.setattr(malloc, "_mallopt", lambda: None)
    monkeypatch.setattr(malloc, "_applied", None)
    assert malloc.set_cpu_malloc("retain") is False
    assert malloc.applied() == "system"
    assert "cpu_malloc 'retain' needs glibc's mallopt" in capsys.readouterr().err
    assert malloc.set_cpu_malloc("retain", quiet=True) is False
    assert capsys.readouterr().err == ""


def test_system_after_retain_is_not_in_effect(monkeypatch) -> None:
    monkeypatch.setattr(malloc, "_applied", "retain")
    assert malloc.set_cpu_malloc("retain") is True
    assert malloc.set_cpu_malloc("system") is False  # cannot be undone within the process
    with pytest.raises(ValueError, match="cpu_malloc must be one of retain, system"):
        malloc.set_cpu_malloc("jemalloc")


@pytest.mark.parametrize("device, policy, calls", [
    ("cpu", "retain", ["retain"]), ("cpu", "system", ["system"]), ("meta", "retain", [])])
def test_the_trainer_applies_the_configured_policy_on_cpu_only(monkeypatch, device, policy, calls) -> None:
    seen: list[str] = []
    monkeypatch.setattr("darht.engine.setup.set_cpu_malloc", lambda p: seen.append(p))
    configure_backends(make_config({"cpu_malloc": policy}), torch.device(device))
    assert seen == calls
