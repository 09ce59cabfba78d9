# segfuse in a container, on an NVIDIA GPU (the default) or on the CPU only:
#
#   docker build -t segfuse .                               # CUDA
#   docker build --build-arg VARIANT=cpu -t segfuse:cpu .   # CPU only (no CUDA libraries, GBs smaller)
#   docker run --rm --gpus all -v "$PWD:/data" segfuse predict --checkpoint run/checkpoint_best.pt \
#       --image t1.nii.gz --out seg.nii.gz
#
# The CUDA variant is a Python base plus the pinned torch wheel from PyPI: torch's Linux
# x86_64 wheels are the CUDA builds and bring the CUDA runtime, cuDNN and NCCL as nvidia-*
# wheels, so no CUDA base image is needed; the host needs only the NVIDIA driver and the
# NVIDIA Container Toolkit (`--gpus all`). The example configs are in /opt/segfuse/configs.
ARG VARIANT=cuda

FROM python:3.11-slim AS base
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib

# torch first, pinned (the pins must satisfy pyproject's torch requirement and match the
# Makefile's; tests/test_docker.py checks both). Installing it before the package means
# pip sees torch already satisfied and never picks another build.
FROM base AS torch-cuda
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN pip install torch==2.14.1 torchvision==0.29.1

# The default PyPI wheel bundles CUDA libraries (several GB) that a CPU image never uses.
FROM base AS torch-cpu
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1

# hadolint ignore=DL3006
FROM torch-${VARIANT} AS final
WORKDIR /opt/segfuse
COPY pyproject.toml README.md ./
COPY segfuse ./segfuse
COPY configs ./configs
RUN pip install --no-cache-dir .

RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin segfuse \
    && mkdir -p /data \
    && chown segfuse:segfuse /data
# numeric, so that a runtime that insists on a non-root user (runAsNonRoot) can check it
USER 1000:1000
WORKDIR /data
ENTRYPOINT ["segfuse"]
CMD ["--help"]
