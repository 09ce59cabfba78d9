# segfuse on CPU: docker build -t segfuse . && docker run --rm -v "$PWD:/data" segfuse --help
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/segfuse

# torch first, pinned, from the PyTorch CPU index: the default PyPI wheel of torch
# bundles CUDA libraries (several GB) that a CPU image never uses. Installing it
# before the package means pip sees torch already satisfied and fetches no CUDA build.
# The pin must satisfy pyproject's torch requirement (tests/test_packaging.py checks it).
RUN pip install --index-url https://download.pytorch.org/whl/cpu \
        torch==2.14.1 torchvision==0.29.1

COPY pyproject.toml README.md ./
COPY segfuse ./segfuse
RUN pip install .

WORKDIR /data
ENTRYPOINT ["segfuse"]
CMD ["--help"]
