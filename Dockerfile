# One image for every exo_celery process: worker, beat, Flower, migrations and the CLI.
#   docker build -t exo-celery .
#   docker run --rm -e EXO_DATABASE_URL=... -e EXO_BROKER_URL=... exo-celery exo-celery db upgrade
#   docker run ... -e EXO_NAMESPACE=ns -e EXO_NODES=my_nodes exo-celery celery -A exo_celery.worker_app worker
#   docker run ... exo-celery celery -A exo_celery.beat_app beat
FROM python:3.12-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    EXO_HOME=/app/.exo

WORKDIR /app

# The library first (its dependencies change less often than the entry points).
COPY pyproject.toml README.md LICENSE ./
COPY exo_celery ./exo_celery
RUN pip install .

# The entry points are in the package (`celery -A exo_celery.worker_app worker`, `celery -A exo_celery.beat_app
# beat`); worker/ and beat/ re-export them for older `celery -A worker.app` commands, config/ has the examples.
# Your node modules: COPY them here (/app is the working directory, so they import) or pip install them.
COPY worker ./worker
COPY beat ./beat
COPY config ./config

# Celery refuses to be comfortable as root; EXO_HOME is a volume shared by the containers.
RUN useradd --create-home --uid 1000 exo && mkdir -p /app/.exo && chown -R exo /app/.exo
USER exo
VOLUME ["/app/.exo"]

CMD ["exo-celery", "--help"]
