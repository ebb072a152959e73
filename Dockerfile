# syntax=docker/dockerfile:1
# One image for every process of Foundry Mesh. Kubernetes picks the process with `args`
# (`python -m services.<svc> serve|migrate`, `python -m gateway`); without args it runs the embedded
# all-in-one mesh. Build: `docker build -t foundry-mesh:0.1.0 .` (deploy/k8s/README.md).

# The workbench's browser libraries, pinned as in the Makefile's `vendor` target.
FROM node:22-slim AS web
RUN npm install --prefix /web --no-audit --no-fund diff2html@3.4.56 @xterm/xterm@6.0.0 @xterm/addon-fit@0.11.0 \
 && mkdir -p /vendor/diff2html /vendor/xterm \
 && d=/web/node_modules/diff2html \
 && cp $d/bundles/js/diff2html.min.js $d/bundles/css/diff2html.min.css $d/LICENSE.md /vendor/diff2html/ \
 && x=/web/node_modules/@xterm \
 && cp $x/xterm/lib/xterm.mjs /vendor/xterm/xterm.js && cp $x/xterm/css/xterm.css $x/xterm/LICENSE /vendor/xterm/ \
 && cp $x/addon-fit/lib/addon-fit.mjs /vendor/xterm/addon-fit.js \
 && cp $x/addon-fit/LICENSE /vendor/xterm/LICENSE.addon-fit

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements.lock ./
# Runtime pins only: requirements.lock lists the test and lint tools after its "# dev / test" line.
RUN sed '/^# dev \/ test/,$d' requirements.lock > /tmp/runtime.txt \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install -r /tmp/runtime.txt
# Code generation runs in a throwaway venv (protoc plugins for the .pyi stubs come from mypy-protobuf).
RUN python -m venv /opt/gen \
 && /opt/gen/bin/pip install $(grep -E '^(grpcio-tools|protobuf|mypy-protobuf)==' requirements.lock)
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY scripts/gen_proto.py ./scripts/gen_proto.py
RUN /opt/gen/bin/python scripts/gen_proto.py
COPY services ./services
COPY gateway ./gateway
COPY --from=web /vendor ./gateway/static/vendor
RUN /opt/venv/bin/pip install --no-deps . \
 && /opt/venv/bin/python -m compileall -q /opt/venv

FROM python:3.11-slim
# git: the sandbox clones and pushes repositories; tini: PID 1 that forwards SIGTERM and reaps the
# agents' orphaned children.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git tini ca-certificates bubblewrap socat util-linux \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 foundry \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/foundry --shell /usr/sbin/nologin foundry \
 && install -d -o 10001 -g 10001 /var/lib/foundry
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FOUNDRY_DATA_DIR=/var/lib/foundry \
    FOUNDRY_BIND_HOST=0.0.0.0 \
    GRPC_ENABLE_FORK_SUPPORT=false
WORKDIR /var/lib/foundry
# Numeric, so Kubernetes' runAsNonRoot can verify it (the manifests use the same uid/gid).
USER 10001:10001
EXPOSE 8080 9464 50051 50052 50053 50054
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["python", "-m", "services.embedded"]
