# Multi-stage build: compile the Cython core in a builder, ship only the wheel.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY flashgate ./flashgate
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# redis-server for the embedded mode (no --redis given); production points --redis elsewhere
RUN apt-get update && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 flashgate
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER flashgate
WORKDIR /home/flashgate
ENV FLASHGATE_HOST=0.0.0.0 FLASHGATE_PORT=8080 FLASHGATE_DATA_DIR=/home/flashgate/data
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --timeout=2s --start-period=10s --retries=3 \
  CMD python -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/livez' % os.environ.get('FLASHGATE_PORT', '8080'), timeout=2)"
ENTRYPOINT ["flashgate", "serve"]
