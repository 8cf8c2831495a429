# Training image: torch + transformers (training, evaluation, ONNX export).
#   docker build -f docker/train.Dockerfile .
ARG BASE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY app ./app
COPY encoder ./encoder
COPY indexer ./indexer
COPY plugin ./plugin
COPY cirdata ./cirdata
COPY training ./training
COPY scripts ./scripts
COPY models ./models
RUN pip install ".[train,serve]" && python -c "import training.model"
ENTRYPOINT ["dqe-cir"]
CMD ["--help"]
