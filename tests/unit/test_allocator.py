"""Freed activations stay in the process (translator/allocator.py): a model pass that frees and
re-allocates its buffers no longer page-faults them back in. Each case runs in a fresh Python, as
the setting is process-wide."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from translator import allocator

ROOT = Path(__file__).resolve().parents[2]

# Five NAFNet passes at 256x256 (its default width), counting the minor page faults they cost.
PROBE = """
import json, resource, sys
from translator.allocator import retain_freed_memory
applied = retain_freed_memory()
if len(sys.argv) < 2:
    print(json.dumps({"applied": applied}))
    sys.exit()
import torch
from translator.nets.nafnet import NAFNet
net, x = NAFNet().eval(), torch.rand(1, 3, 256, 256)
with torch.inference_mode():
    net(x)  # the first pass faults its memory in in any case
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        net(x)
print(json.dumps({"applied": applied,
                  "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc",
                           reason="the setting exists in glibc only; elsewhere it is a documented no-op")


def probe(passes: bool = True, **env) -> dict:
    """{"applied": what retain_freed_memory() returned, "faults": of the passes (when run)}."""
    clean = {k: v for k, v in os.environ.items() if k not in (*allocator.USER_SETTINGS, allocator.OPT_OUT)}
    out = subprocess.run([sys.executable, "-c", PROBE, *(["passes"] if passes else [])], env={**clean, **env},
                         cwd=ROOT, capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_retained_memory_is_not_page_faulted_in_again():
    kept = probe()
    default = probe(**{allocator.OPT_OUT: "0"})
    assert kept["applied"] is True and default["applied"] is False
    # glibc's defaults hand the activations back to the kernel: some 20,000 faults a pass here.
    assert default["faults"] > 5 * 5000
    assert kept["faults"] < default["faults"] / 10


@glibc
def test_a_users_own_malloc_settings_are_left_alone():
    assert probe(False, MALLOC_TRIM_THRESHOLD_="131072")["applied"] is False
    assert probe(False, GLIBC_TUNABLES="glibc.malloc.trim_threshold=131072")["applied"] is False
    assert probe(False)["applied"] is True


def test_calling_it_again_changes_nothing():
    first = allocator.retain_freed_memory()
    assert allocator.retain_freed_memory() is first
