"""allocator.py: under glibc, the memory a step frees is reused, not faulted in anew."""
import json
import os
import subprocess
import sys

import pytest

GLIBC = (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc") \
    if hasattr(os, "confstr") and "CS_GNU_LIBC_VERSION" in os.confstr_names else False

# a step's pattern that glibc's moving thresholds handle badly: one large array freed early
# (its size sets the thresholds), then each step three arrays just under it, freed together,
# which leaves more free memory at the heap's top than the trim threshold allows
STEPS = r"""
import json, resource
import numpy as np
import scratchnet
from scratchnet import allocator

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

size = 2 << 20
first = np.ones(size // 8)
del first
for _ in range(3):
    arrays = [np.ones(size // 8 - 1024) for _ in range(3)]
    del arrays
before = faults()
for _ in range(20):
    arrays = [np.ones(size // 8 - 1024) for _ in range(3)]
    del arrays
pages = 3 * size // resource.getpagesize()
print(json.dumps({"applied": allocator.applied(), "faults": (faults() - before) / 20,
                  "pages": pages}))
"""


def _run(tuning):
    env = dict(os.environ, SCRATCHNET_MALLOC_TUNING=tuning)
    out = subprocess.run([sys.executable, "-c", STEPS], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the tuning applies to glibc's malloc only")
def test_freed_memory_is_reused_without_page_faults():
    tuned, default = _run("1"), _run("0")
    assert tuned["applied"] and not default["applied"]
    # the pattern does fault under glibc's defaults (else this test would prove nothing) ...
    assert default["faults"] > 0.5 * default["pages"], default
    # ... and not once the thresholds are fixed
    assert tuned["faults"] < 0.05 * tuned["pages"], tuned


def test_switch_off_leaves_malloc_alone():
    assert _run("0")["applied"] is False
