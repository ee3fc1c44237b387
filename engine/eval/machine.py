"""The machine a benchmark ran on, named in its results (no torch: cheap to import anywhere)."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> dict:
    """{"cpu": the CPU model name, "cores": logical cores} of this machine."""
    name = ""
    try:
        name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cpu": name or platform.processor() or platform.machine(), "cores": os.cpu_count()}


def cpu_name() -> str:
    return machine()["cpu"]
