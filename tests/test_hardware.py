"""The oneDNN setting: a primitive cache large enough for a detection model's many shapes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from lpr.hardware import ONEDNN_CACHE_CAPACITY, ONEDNN_CACHE_ENV

# A fresh process (oneDNN reads its cache capacity once): enlarge the cache, then run one
# channels-last convolution on 12 input shapes twice, the second time with oneDNN reporting
# each primitive it creates or finds in its cache.
SWEEP = """
import torch
from lpr.hardware import enlarge_onednn_cache

print("capacity", enlarge_onednn_cache(), flush=True)
torch.set_num_threads(1)
conv = torch.nn.Conv2d(32, 32, 3, padding=1).to(memory_format=torch.channels_last)
shapes = [(2, 32, 16 + i, 16) for i in range(12)]

def sweep():
    with torch.no_grad():
        for shape in shapes:
            conv(torch.randn(shape).to(memory_format=torch.channels_last))

sweep()
with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON_CREATION):
    sweep()
"""


def _sweep(env_capacity: str | None) -> tuple[int, int, int]:
    """(capacity asked for, primitives created again, primitives found in the cache) in the second sweep."""
    env = {k: v for k, v in os.environ.items() if k != ONEDNN_CACHE_ENV}
    if env_capacity is not None:
        env[ONEDNN_CACHE_ENV] = env_capacity
    out = subprocess.run([sys.executable, "-c", SWEEP], env=env, capture_output=True, text=True, check=True).stdout
    capacity = int(next(line.split()[1] for line in out.splitlines() if line.startswith("capacity ")))
    conv_lines = [line for line in out.splitlines() if line.startswith("onednn_verbose") and ",convolution," in line]
    return (
        capacity,
        sum(",create:cache_miss," in line for line in conv_lines),
        sum(",create:cache_hit," in line for line in conv_lines),
    )


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")
def test_enlarged_onednn_cache_keeps_every_shape_and_an_explicit_setting_wins():
    capacity, missed, hit = _sweep(None)
    assert capacity == ONEDNN_CACHE_CAPACITY
    assert (missed, hit) == (0, 12)  # all 12 shapes' primitives kept from the first sweep
    capacity, missed, hit = _sweep("4")  # the user's setting stays: 4 primitives, 12 shapes in turn
    assert capacity == 4
    assert (missed, hit) == (12, 0)
