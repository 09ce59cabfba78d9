"""segfuse.machine: what every benchmark prints beside its figures."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from segfuse.machine import cpu_model, machine_info, machine_line


def test_cpu_model_is_the_model_name_not_the_architecture():
    name = cpu_model()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file() and "model name" in cpuinfo.read_text():
        assert name != platform.machine()  # "x86_64" is what platform.processor() gives on Linux
        assert name in cpuinfo.read_text()
    assert name


def test_machine_info_and_line_agree():
    info = machine_info()
    assert info["cores"] >= 1 and info["torch"] == torch.__version__
    assert info["gpu"] is None or torch.cuda.is_available()
    line = machine_line(info)
    assert line.startswith(info["cpu"]) and f"{info['cores']} cores" in line
    assert ("no GPU" in line) == (info["gpu"] is None)
