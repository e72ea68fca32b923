# FactLoop's web app and its Celery workers (generate, export queues) and beat.
# Build from the repository root:
#   docker build -f deploy/docker/app.Dockerfile -t factloop-app:latest .
# The web app never loads torch, but the pinned requirements include it (the workers and
# the trainer share one code base): pass a CPU wheel index for a smaller image, e.g.
#   --build-arg PIP_EXTRA_INDEX_URL=<the PyTorch CPU wheel index>
FROM python:3.11-slim-bookworm

ARG PIP_EXTRA_INDEX_URL=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL} \
    DJANGO_SETTINGS_MODULE=webapp.settings

RUN apt-get update \
    && apt-get install -y --no-install-recommends git libpq5 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 factloop \
    && mkdir -p /srv/factloop/var /srv/factloop/media /srv/factloop/models /srv/factloop/training /srv/factloop/exports \
    && chown -R factloop /srv/factloop

WORKDIR /srv/factloop/app
COPY requirements.txt constraints.txt ./
COPY deploy/serving/patch_torchvision.py deploy/serving/patch_torchvision.py
RUN pip install -r requirements.txt -c constraints.txt \
    && python deploy/serving/patch_torchvision.py
COPY --chown=factloop . .
# The admin's static files, served by whitenoise from the image.
RUN DEBUG=1 python manage.py collectstatic --noinput

USER factloop
EXPOSE 8000
# The web app, behind a buffering proxy (deploy/k8s/proxy/); the workers override the command
# (deploy/compose.yaml, deploy/k8s/).
CMD ["gunicorn", "webapp.wsgi", "--bind", "0.0.0.0:8000", "--worker-class", "gthread", "--workers", "2", "--threads", "16", "--timeout", "120", "--access-logfile", "-"]
