"""Shared bits of the benchmark scripts: the machine description and the JSON result file."""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"
REAL_CLIP = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "bigbuckbunny.mp4"  # CC-BY, shipped


def machine() -> dict[str, Any]:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def save(name: str, results: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **results}, indent=2) + "\n")
    print(f"wrote {path}")
    return path


class GpuUtilisation:
    """Mean GPU utilisation (%, from NVML through torch) sampled while the ``with`` block runs;
    None without a GPU or without NVML bindings (``pip install nvidia-ml-py``)."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.samples, self._stop = interval, [], threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(torch.cuda.utilization())

    def __enter__(self) -> GpuUtilisation:
        if torch.cuda.is_available() and self._readable():
            threading.Thread(target=self._sample, daemon=True).start()
        return self

    @staticmethod
    def _readable() -> bool:
        try:
            torch.cuda.utilization()
        except (ModuleNotFoundError, RuntimeError):
            return False
        return True

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def seconds_per_call(fn: Callable[[], object], device: torch.device, repeat: int, warmup: int = 2) -> float:
    """Mean wall seconds of ``fn()`` over ``repeat`` calls after ``warmup`` ones, the GPU synchronised."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat
