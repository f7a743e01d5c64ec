"""One numeric-precision policy, read from ``runtime.precision``, for everything that runs a model.

``fp32`` runs in fp32 and ``bf16`` in bf16 autocast, everywhere. ``auto`` picks bf16 on a GPU;
on a CPU it picks bf16 for the head only where the CPU multiplies bf16 natively (AVX512-BF16 or
AMX), which makes a large head's step 2-4x faster (at a cost in accuracy on some recipes:
docs/method.md D17); the image tower stays fp32 on a CPU, and CPUs without bf16 units run
everything in fp32, where bf16 would be emulated and slower.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from functools import cache
from pathlib import Path
from typing import Literal

import torch

from anim_clip.config import Config

Part = Literal["tower", "head"]
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names of bf16 matrix instructions


@cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (Linux; elsewhere assumed not)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def autocast_dtype(precision: str, device: torch.device, part: Part) -> torch.dtype | None:
    """bf16 where the policy (module docstring) says so for ``part`` on ``device``; None means fp32."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp32":
        return None
    if device.type == "cuda" or (part == "head" and device.type == "cpu" and cpu_has_native_bf16()):
        return torch.bfloat16
    return None


def autocast(precision: str, device: torch.device, part: Part) -> AbstractContextManager:
    """``torch.autocast`` as :func:`autocast_dtype` decides (disabled for fp32)."""
    dtype = autocast_dtype(precision, device, part)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def training_autocast(cfg: Config, device: torch.device) -> AbstractContextManager:
    """A training step's precision: the head's in cached mode; end to end, the tower's, whose
    forward and backward dominate the step."""
    return autocast(cfg.runtime.precision, device, "head" if cfg.train.mode == "cached" else "tower")
