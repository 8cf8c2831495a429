# Serving image: workers and the search plugin. No torch.
#   docker build -f docker/serve.Dockerfile --build-arg EXTRA=serve .   # CPU (onnxruntime)
#   docker build -f docker/serve.Dockerfile --build-arg EXTRA=gpu .     # GPU (onnxruntime-gpu)
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG EXTRA=serve
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY app ./app
COPY encoder ./encoder
COPY indexer ./indexer
COPY plugin ./plugin
RUN pip install ".[${EXTRA},monitoring]" \
    && python -c "import app.cli, encoder, indexer, plugin" \
    && dqe-cir --help > /dev/null \
    && useradd --create-home app
USER app
CMD ["celery", "-A", "indexer", "worker", "--loglevel", "INFO"]
