# The Broadcast application image: workers, beat, the management API, the metrics server
# and Flower all run from it (compose.yaml picks the command). Gateways do not use it.
#
# The base image is pinned to a patch release; bump it on purpose (and rebuild for its
# security fixes). Linted by hadolint in the tests (tests/test_deploy_files.py).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md celeryconfig.py ./
COPY tasks tasks
COPY destinations destinations
COPY settings settings
COPY broadcast_engine broadcast_engine
COPY broadcast_broker broadcast_broker
COPY broadcast_interfaces broadcast_interfaces
# `harness` (the demo's and the tests' local processes) is not copied: the wheel built
# here has no test harness, while the wheel built from the repository keeps it for
# `make demo`. Nothing the image runs imports it (the layer contracts, pyproject.toml).
# Wheels for Broadcast and every dependency, so the runtime stage installs offline.
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[ops]'

FROM ${PYTHON_IMAGE}
# A fixed numeric uid, so volume permissions and `runAsUser` policies can name it.
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/broadcast broadcast
COPY --from=build /wheels /wheels
# Exactly the wheels built above (Broadcast, Flower and their pinned resolution).
RUN pip install --no-cache-dir --no-index /wheels/*.whl \
    && rm -rf /wheels
USER 10001
# Outside any source tree: `celery -A tasks` imports the installed packages.
WORKDIR /var/lib/broadcast
ENV PYTHONUNBUFFERED=1 \
    BROADCAST_LOG_FORMAT=json
# management API, metrics, Flower
EXPOSE 8080 9808 5555
# For the default command (a worker of every queue named worker@<host>); compose.yaml
# gives each service its own check.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s \
    CMD ["broadcast", "health", "worker", "--node", "worker"]
# Celery's warm shutdown: running tasks finish (give it more than task_time_limit, 150 s).
STOPSIGNAL SIGTERM
CMD ["celery", "-A", "tasks", "worker", "-Q", "broadcast.fanout,broadcast.deliver,broadcast.maintenance", "-n", "worker@%h"]
