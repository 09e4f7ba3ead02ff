"""The machine a benchmark ran on, in one line: every bench prints it above its table.

    from machine import machine    # bench scripts put bench/ on sys.path (they are run as scripts)
    print(f"machine: {machine()}")
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    load = f", load average {os.getloadavg()[0]:.1f} at start" if hasattr(os, "getloadavg") else ""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{platform.node()}: {cpu}, {os.cpu_count()} cores{load}; {gpu}; torch {torch.__version__} "
            f"({torch.get_num_threads()} threads); python {platform.python_version()}")
