# FactLoop's trainer: the Celery worker of the `train` queue, on a CUDA build of torch.
# train_round runs `python -m rlhf.cli` here, alone or under `accelerate launch` on the
# machine's GPUs (FACTLOOP_TRAIN_LAUNCHER, deploy/accelerate/).
# Build from the repository root:
#   docker build -f deploy/docker/trainer.Dockerfile -t factloop-trainer:latest .
# BASE must carry the torch release requirements.txt pins (2.13.0) and Python 3.11.
ARG BASE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DJANGO_SETTINGS_MODULE=webapp.settings

RUN apt-get update \
    && apt-get install -y --no-install-recommends git libpq5 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 factloop \
    && mkdir -p /srv/factloop/var /srv/factloop/media /srv/factloop/models /srv/factloop/training \
    && chown -R factloop /srv/factloop

WORKDIR /srv/factloop/app
COPY requirements.txt constraints.txt ./
# torch comes with the base image (the same release: pip keeps it); deepspeed for the
# ZeRO-2/3 configs. FSDP2 and DDP need nothing more.
RUN pip install -r requirements.txt -c constraints.txt \
    && pip install "deepspeed==0.19.8"
COPY --chown=factloop . .

USER factloop
CMD ["celery", "-A", "webapp", "worker", "-Q", "train", "--pool", "solo", "--loglevel", "INFO"]
