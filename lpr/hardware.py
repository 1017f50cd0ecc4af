"""What the CPU can do, for configs that pick settings by machine (``${lpr.cpu_precision:}``), and
the oneDNN setting a detection model needs on it."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

# CPU flags (Linux /proc/cpuinfo) of native bf16 arithmetic: AVX-512 BF16 (Cooper Lake, Zen 4 and
# later) and AMX (Sapphire Rapids and later). Without them oneDNN emulates bf16 with fp32 maths
# plus conversions, and bf16 autocast makes a training step slower, not faster (docs/recipe.md).
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})

# oneDNN keeps the 1024 convolution primitives (compiled kernels) it built last and builds any
# other again. A Mask R-CNN step meets far more: every training-window size and every count of
# positive RoIs is a new shape for each convolution, forward and both backwards. With 1024 the
# plate recipe rebuilt 40-55 primitives a step, every step (docs/recipe.md, machine F).
ONEDNN_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
ONEDNN_CACHE_CAPACITY = 16384


@lru_cache(maxsize=1)
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags, or an empty set where ``/proc/cpuinfo`` is not there (macOS, Windows)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 / ARM
            return frozenset(value.split())
    return frozenset()


def native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Does this CPU compute in bf16 natively (so that bf16 autocast speeds training up)?"""
    return bool((cpu_flags() if flags is None else flags) & NATIVE_BF16_FLAGS)


def cpu_precision(flags: frozenset[str] | None = None) -> str:
    """Lightning ``precision`` for CPU training: ``"bf16-mixed"`` with native bf16, else ``"32-true"``."""
    return "bf16-mixed" if native_bf16(flags) else "32-true"


def enlarge_onednn_cache(capacity: int = ONEDNN_CACHE_CAPACITY) -> int:
    """Let oneDNN keep ``capacity`` primitives, unless ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` is set already.

    oneDNN reads the variable once, when it builds its first primitive, so this must run before the
    process's first convolution (``lpr.train``, ``lpr.evaluate`` and ``lpr.predict`` call it first
    thing); later it changes nothing. Returns the capacity the environment now asks for.
    """
    return int(os.environ.setdefault(ONEDNN_CACHE_ENV, str(capacity)))
