# syntax=docker/dockerfile:1
# The tuner image: one image for every role (schema init, workers, dashboard, scheduler,
# nightly CronJob); the role is the command, e.g.
# `docker run -v tuner-data:/data IMAGE run studies/digits.toml --storage sqlite:////data/tuner.db`
# (the image's user can write in /data only; docker-compose.yml points every role at PostgreSQL).
# Used by docker-compose.yml and deploy/k8s/. Guide: docs/deploy.md
#
#   docker build -t tuner:latest .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: wheels for tuner and every dependency, from pyproject.toml ---------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Compilers only here, for any dependency without a binary wheel for this platform.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# 1. the dependencies, read from pyproject.toml (this layer is cached until pyproject changes)
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && pip wheel --wheel-dir /wheels -r requirements.txt
# 2. tuner itself (hatchling; the dashboards are bundled into the wheel)
COPY README.md ./
COPY tuner/ tuner/
COPY dashboards/ dashboards/
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-index --find-links=/wheels tuner \
    && /opt/venv/bin/tuner --help > /dev/null

# --- runtime: the virtual environment, the study files and dashboards; no build tools -------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="tuner" \
      org.opencontainers.image.description="Optuna tuning of optimizer, LR, warmup, decay and batch-size scaling" \
      org.opencontainers.image.licenses="Apache-2.0"
# TZ=UTC: Optuna 5 stores naive UTC timestamps; every worker, dashboard and scheduler must agree.
ENV TZ=UTC \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    TUNER_DASHBOARDS=/app/dashboards
RUN groupadd --system --gid 10001 tuner \
    && useradd --system --uid 10001 --gid tuner --home-dir /home/tuner --create-home \
       --shell /usr/sbin/nologin tuner \
    && mkdir -p /data \
    && chown tuner:tuner /data
COPY --from=builder /opt/venv /opt/venv
# The training kernels (numba) are compiled here once, into a cache the tuner user can extend:
# every signature a run uses (warm_up): both dtypes, data writable or read-only (a worker's is a
# read-only view of shared memory), training batches and whole-split evaluation, one thread and
# threads (parallel=True: the build machine may have one core, the cluster's more). A container
# whose CPU matches the build machine's starts training at once, any other compiles them when
# its workers start (about 15 s) and keeps them for the container's life. Writable by any user:
# `docker compose run --user "$(id -u):$(id -g)" ... report` (docs/deploy.md) runs as another
# uid, and numba refuses to import its kernels where it cannot write its cache.
ENV NUMBA_CACHE_DIR=/var/cache/tuner/numba
RUN mkdir -p "$NUMBA_CACHE_DIR" \
    && python -c "from tuner.kernels import warm_up; [warm_up(dtype, parallel=True) for dtype in ('float32', 'float64')]" \
    && chown -R tuner:tuner /var/cache/tuner \
    && chmod -R a+rwX /var/cache/tuner
WORKDIR /app
# read-only for the tuner user (owned by root); edit them in the repo or mount your own
COPY studies/ /app/studies/
COPY dashboards/ /app/dashboards/
USER tuner:tuner
# No HEALTHCHECK here: one image serves roles with different health (a worker or the init job
# has no port). docker-compose.yml has the dashboard's HTTP check (/tuner/health, which queries
# the database) and the scheduler's (the age of its --heartbeat file); deploy/k8s/dashboard.yaml
# probes /tuner/health (readiness) and /tuner/live (liveness); PostgreSQL's is pg_isready.
# Reports and other files you write go to /data (writable; /app is not): mount a folder there.
ENTRYPOINT ["tuner"]
CMD ["--help"]
