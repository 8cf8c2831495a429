# Training image: torch + transformers (training, evaluation, ONNX export), the CPU build of torch by default.
#   make images                                          # dqe-cir-train, with the CPU torch
#   docker build -f docker/train.Dockerfile .
#   docker build -f docker/train.Dockerfile --build-arg TORCH_SPEC=torch==2.13.0 \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .     # a CUDA build, for GPUs
# BASE: any Python 3.11 image with pip and useradd; `make base-image` makes one from Debian packages.
ARG BASE=python:3.11-slim
FROM ${BASE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# torch first, from the CPU index: the `train` extra's plain `torch` range would pull a multi-GB CUDA build.
# TORCH_FIND_LINKS: a folder of wheels mounted at build time (podman build -v DIR:/wheels:ro) for hosts that
# cannot reach TORCH_INDEX; the rest still comes from the default index.
ARG TORCH_SPEC=torch==2.13.0+cpu
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_FIND_LINKS=
RUN if [ -n "$TORCH_FIND_LINKS" ]; then pip install --find-links "$TORCH_FIND_LINKS" "$TORCH_SPEC"; \
    else pip install --index-url "$TORCH_INDEX" "$TORCH_SPEC"; fi
# The other dependencies from pyproject.toml alone: a code change rebuilds only the layers below them.
COPY pyproject.toml docker/requirements.py /tmp/build/
RUN python /tmp/build/requirements.py /tmp/build/pyproject.toml train,serve > /tmp/build/requirements.txt \
    && pip install -r /tmp/build/requirements.txt
RUN useradd --create-home --uid 10001 app
COPY pyproject.toml README.md ./
COPY app ./app
COPY encoder ./encoder
COPY indexer ./indexer
COPY plugin ./plugin
COPY cirdata ./cirdata
COPY training ./training
COPY scripts ./scripts
COPY models ./models
# Editable: scripts/ and models/ (the shipped demo model) are used from /app, beside the package.
RUN pip install -e ".[train,serve]" && python -c "import training.model" && dqe-cir train --help > /dev/null
USER app
ENTRYPOINT ["dqe-cir"]
CMD ["--help"]
