"""What machine a figure was measured on: CPU model, cores, library versions, GPU.

Benchmarks print this beside every number (the same 2-core VM has been moved between
an AMD EPYC and an Intel Xeon host between sessions, and its speed changed with it), and
``segfuse train`` logs it in the run's ``train.log`` each time it starts or resumes.

Example:
    >>> info = machine_info()
    >>> sorted(info)[:3]
    ['cores', 'cpu', 'gpu']
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["cpu_model", "machine_info", "machine_line"]


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``platform.processor()`` says only ``x86_64`` on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> dict[str, Any]:
    """``{cpu, cores, gpu, torch, torch_threads, monai, python, load_average}`` of this process's machine.

    ``cores`` is what this process may run on (its CPU affinity); ``gpu`` is the
    name of CUDA device 0 or ``None``; ``load_average`` the 1-, 5- and 15-minute
    load when this was called (a benchmark run beside other work says so here).
    """
    import monai
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cores": cores,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "monai": monai.__version__,
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def machine_line(info: dict[str, Any] | None = None) -> str:
    """One line for a report: ``Intel(R) Xeon(R) Processor, 2 cores, no GPU, torch 2.14.1, MONAI 1.6.1, load 1.0``."""
    info = info or machine_info()
    gpu = info["gpu"] or "no GPU"
    load = f", load {info['load_average'][0]:.1f}" if info.get("load_average") else ""
    return (f"{info['cpu']}, {info['cores']} cores, {gpu}, torch {info['torch']} ({info['torch_threads']} threads), "
            f"MONAI {info['monai']}, Python {info['python']}{load}")
