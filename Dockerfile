# syntax=docker/dockerfile:1
# The sieve image: one image for the server (`sieve serve`, the default
# command), the worker (`sieve worker`) and the one-shot jobs (`sieve migrate`,
# `sieve import`, `sieve train`).
#
#   docker build -t sieve:local .                       # the package alone
#   docker build -t sieve:local --build-arg EXTRAS=dev .  # with extras (comma-separated)
#
# Settings come from SIEVE_* environment variables (src/sieve/settings.py):
# deploy/compose.yaml and deploy/k8s/ set the store, the cache and the keys.

ARG PYTHON_VERSION=3.11

# ---- build: install the package and its dependencies into a virtualenv ----
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ARG EXTRAS=
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/sieve
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# `.` or `.[extra,…]`: the extras are a build argument
RUN /opt/sieve/bin/pip install --no-cache-dir ".${EXTRAS:+[${EXTRAS}]}"

# ---- runtime: the virtualenv, the OpenMP runtime, an unprivileged user ----
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
# libgomp1: LightGBM's wheel links the system's OpenMP runtime. Debian's
# security updates move its version, so it is not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
# a fixed, numeric uid/gid (10001), which Kubernetes' runAsNonRoot can check
RUN groupadd --system --gid 10001 sieve \
    && useradd --system --uid 10001 --gid sieve --home-dir /var/lib/sieve --shell /usr/sbin/nologin sieve \
    && mkdir -p /var/lib/sieve/models \
    && chown -R sieve:sieve /var/lib/sieve
COPY --from=build /opt/sieve /opt/sieve
ENV PATH=/opt/sieve/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    SIEVE_HOST=0.0.0.0 \
    SIEVE_PORT=8000 \
    SIEVE_MODEL_DIR=/var/lib/sieve/models
WORKDIR /var/lib/sieve
USER 10001:10001
EXPOSE 8000
# liveness only: /health answers while the process runs (readiness, a loaded
# model and a reachable store, is /ready). The server listens once its model
# is loaded, hence the start period. Uses Python: the image has no curl.
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SIEVE_PORT', '8000') + '/health', timeout=2)"]
ENTRYPOINT ["sieve"]
CMD ["serve"]
