# Serving image: workers, the search API and the search plugin. No torch. `make images` builds it twice:
#   dqe-cir-worker (EXTRA=serve) and dqe-cir-api (EXTRA=serve,api); by hand:
#   docker build -f docker/serve.Dockerfile --build-arg EXTRA=serve .       # CPU (onnxruntime)
#   docker build -f docker/serve.Dockerfile --build-arg EXTRA=serve,api .   # + `dqe-cir serve`
#   docker build -f docker/serve.Dockerfile --build-arg EXTRA=gpu .         # GPU (onnxruntime-gpu)
# BASE: any Python 3.11 image with pip and useradd; `make base-image` makes one from Debian packages.
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG EXTRA=serve
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# The dependencies first, from pyproject.toml alone: a code change rebuilds only the layers below them.
COPY pyproject.toml docker/requirements.py /tmp/build/
RUN python /tmp/build/requirements.py /tmp/build/pyproject.toml "${EXTRA},monitoring" > /tmp/build/requirements.txt \
    && pip install -r /tmp/build/requirements.txt
# A fixed uid, so that an operator can chown a mounted folder (a local-mode QDRANT_PATH) to it.
RUN useradd --create-home --uid 10001 app
COPY pyproject.toml README.md ./
COPY app ./app
COPY encoder ./encoder
COPY indexer ./indexer
COPY plugin ./plugin
RUN pip install ".[${EXTRA},monitoring]" \
    && python -c "import app.cli, encoder, indexer, plugin" \
    && dqe-cir --help > /dev/null
USER app
CMD ["celery", "-A", "indexer", "worker", "--loglevel", "INFO"]
