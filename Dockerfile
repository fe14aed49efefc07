# syntax=docker/dockerfile:1
# The calciphylaxis CDS Hooks service: `docker build -t cds-service:0.1.0 .`
#
# Run it with a configuration mounted at /etc/cds-service/service.toml (see
# deploy/kubernetes/configmap.yaml for one), e.g.
#   docker run --rm -p 8080:8080 -v "$PWD/deploy/local:/etc/cds-service:ro" \
#     -e CDS_LOG_HASH_KEY -e CDS_DATABASE_URL cds-service:0.1.0
# Nothing secret is baked in: keys and the database URL come from the environment.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtualenv with the pinned dependencies and the package, nothing else ----------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

WORKDIR /src

# Dependencies first, in their own layer: the whole runtime tree from the lock (exact versions,
# hashes checked; `make lock` writes it from pyproject.toml), so a code change does not
# reinstall them.
COPY requirements-runtime.lock ./
RUN pip install --require-hashes --requirement requirements-runtime.lock

# The package itself (knowledge, value sets and migrations are its package data), not editable:
# the venv is self-contained and the source tree stays behind in this stage. pip compiles the
# bytecode here, so the read-only runtime never needs to write any.
COPY pyproject.toml README.md ./
COPY cds_service ./cds_service
RUN pip install --no-deps . \
    && python -P -c "import cds_service.web.app"

# ---- runtime --------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="cds-service" \
      org.opencontainers.image.description="CDS Hooks 2.0 service: calciphylaxis risk on dialysis"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    MPLCONFIGDIR=/tmp/matplotlib

# A fixed UID/GID (10001), so Kubernetes' runAsNonRoot can check it and volumes can be owned.
RUN groupadd --system --gid 10001 cds \
    && useradd --system --uid 10001 --gid cds --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin cds

COPY --from=build /opt/venv /opt/venv

# Card wording is package data (cds_service/cards/cards.toml): installed with the package.
RUN mkdir -p /etc/cds-service /var/lib/cds-service \
    && chown cds:cds /var/lib/cds-service \
    && python -c "from cds_service.cards.writer import CardTemplates; CardTemplates.load()"

# Writable per-container state (JWT replay cache; the SQLite store when no database_url is set):
# a volume in Kubernetes. Also the working directory, so a relative `instance` lands here.
WORKDIR /var/lib/cds-service

USER 10001:10001

EXPOSE 8080

# For plain Docker; Kubernetes ignores it and uses the probes of the Deployment. No curl in slim.
HEALTHCHECK --interval=30s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2).status != 200)"]

# `cds-service serve` (granian's main process is PID 1) stops gracefully on SIGTERM: the workers
# finish the calls in flight within 10 s. Slow clients are read in Rust and hold no worker.
CMD ["cds-service", "serve", "--config", "/etc/cds-service/service.toml"]
