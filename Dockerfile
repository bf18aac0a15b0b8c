# Multi-stage build: compile the Cython core in a builder, ship only the wheel.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY flashgate ./flashgate
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# redis-server for the embedded mode (no --redis given); production points --redis elsewhere.
# tini is PID 1: it passes SIGTERM on to the supervisor and reaps orphans (the
# supervisor then drains its workers and exits 0).
RUN apt-get update && apt-get install -y --no-install-recommends redis-server tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 flashgate \
    && install -d -o flashgate -g flashgate -m 0700 /home/flashgate/data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER flashgate
WORKDIR /home/flashgate
# Listening on every address of the container, the gateway refuses to start without a
# user secret (buyers would otherwise be whoever X-User-Id names). Give one, from a
# file rather than a visible value:
#   docker run -p 8080:8080 --stop-timeout 20 -v "$PWD/secrets:/run/secrets:ro" \
#     -e FLASHGATE_USER_SECRET_FILE=/run/secrets/user_secret \
#     -e FLASHGATE_ADMIN_TOKEN_FILE=/run/secrets/admin_token \
#     -e FLASHGATE_REDIS=rediss://redis.internal:6380/0 flashgate
# or, for a demo only, accept X-User-Id on trust:
#   docker run -p 8080:8080 flashgate --dev
# Without FLASHGATE_REDIS the embedded Redis keeps its data in FLASHGATE_DATA_DIR, a
# volume (one running gateway per data directory); a generated admin token is there too.
# Several instances behind a balancer: deploy/docker-compose.yml and deploy/haproxy.cfg.
ENV FLASHGATE_HOST=0.0.0.0 FLASHGATE_PORT=8080 FLASHGATE_DATA_DIR=/home/flashgate/data
VOLUME ["/home/flashgate/data"]
EXPOSE 8080
# SIGTERM drains: /readyz 503 for --drain-delay, then requests in flight get up to
# --drain-grace (10 s) more. Docker's stop timeout (10 s by default) must be longer
# than both together, or the drain ends in SIGKILL: `docker stop -t 20`,
# `docker run --stop-timeout 20`, compose's stop_grace_period, Kubernetes'
# terminationGracePeriodSeconds.
STOPSIGNAL SIGTERM
# Liveness on the listening port (set the port with FLASHGATE_PORT, not --port, so
# this follows it). Plain HTTP from 127.0.0.1: keep that address out of
# --proxy-protocol-from. A balancer checks /readyz instead (503 while draining).
HEALTHCHECK --interval=5s --timeout=2s --start-period=10s --retries=3 \
  CMD python -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/livez' % os.environ.get('FLASHGATE_PORT', '8080'), timeout=2)"
ENTRYPOINT ["/usr/bin/tini", "--", "flashgate", "serve"]
