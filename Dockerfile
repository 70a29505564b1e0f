# The Broadcast application image: workers, beat, the management API, the metrics server
# and Flower all run from it (compose.yaml picks the command). Gateways do not use it.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md celeryconfig.py ./
COPY tasks tasks
COPY destinations destinations
COPY settings settings
COPY broadcast_engine broadcast_engine
COPY broadcast_broker broadcast_broker
COPY broadcast_interfaces broadcast_interfaces
COPY harness harness
# Wheels for Broadcast and every dependency, so the runtime stage installs offline.
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[ops]'

FROM python:3.11-slim
RUN useradd --system --create-home --home-dir /var/lib/broadcast broadcast
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels 'broadcast[ops]' \
    && rm -rf /wheels
USER broadcast
# Outside any source tree: `celery -A tasks` imports the installed packages.
WORKDIR /var/lib/broadcast
ENV PYTHONUNBUFFERED=1 \
    BROADCAST_LOG_FORMAT=json
# management API, metrics, Flower
EXPOSE 8080 9808 5555
CMD ["celery", "-A", "tasks", "worker", "-Q", "broadcast.fanout,broadcast.deliver,broadcast.maintenance", "-n", "worker@%h"]
