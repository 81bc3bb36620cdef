# One image for every exo_celery process: worker, beat, Flower, migrations and the CLI.
#   docker build -t exo-celery .
#   docker run --rm -e EXO_DATABASE_URL=... -e EXO_BROKER_URL=... exo-celery exo-celery db upgrade
FROM python:3.12-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    EXO_HOME=/app/.exo

WORKDIR /app

# The library first (its dependencies change less often than the entry points).
COPY pyproject.toml README.md ./
COPY exo_celery ./exo_celery
RUN pip install .

# Entry points: `celery -A worker.app worker`, `celery -A beat.app beat` run from /app.
COPY worker ./worker
COPY beat ./beat
COPY config ./config

# Celery refuses to be comfortable as root; EXO_HOME is a volume shared by the containers.
RUN useradd --create-home --uid 1000 exo && mkdir -p /app/.exo && chown -R exo /app/.exo
USER exo
VOLUME ["/app/.exo"]

CMD ["exo-celery", "--help"]
