"""Broadcast's queues on RabbitMQ: quorum queues, declared so a stock client's own
declaration of the gateway-facing queue is equivalent (docs/gateway.md, docs/production.md).

A stock Celery client declares the queue it publishes to before it publishes: Python
Celery declares a direct exchange named after the queue, the queue (durable, no
arguments) and their binding; celery-node declares the queue the same way. Both then
publish through the default exchange, straight to the queue. RabbitMQ refuses a
declaration that differs from the queue's (406 PRECONDITION_FAILED), so for
`broadcast.fanout`:

- its exchange is `direct`, as Python Celery declares it (the worker-facing queues keep
  topic exchanges, which Celery's native delayed delivery needs for countdowns on quorum
  queues; a fan-out retry, sent only while the settings store is unreachable, is instead
  held by the worker until due, at most STORE_RETRY's 30 s cap);
- the queue is quorum, and a declaration without `x-queue-type` is equivalent only in a
  virtual host whose default queue type is quorum (`rabbitmqctl add_vhost VHOST
  --default-queue-type quorum`, tested on RabbitMQ 3.10.8): RabbitMQ adds the vhost's
  type to the declaration before comparing it.
"""

from __future__ import annotations

from kombu import Exchange, Queue

from broadcast_broker.topology import FANOUT_QUEUE, TASK_QUEUES

QUORUM = {"x-queue-type": "quorum"}
# The queue gateways publish to, and the exchange type their stock clients declare for it.
GATEWAY_QUEUE = FANOUT_QUEUE
GATEWAY_EXCHANGE_TYPE = "direct"
WORKER_EXCHANGE_TYPE = "topic"


def exchange_type(queue: str) -> str:
    """The type of the exchange named after `queue`: what a stock client declares for the
    gateway-facing queue, topic (native delayed delivery) for the others."""
    return GATEWAY_EXCHANGE_TYPE if queue == GATEWAY_QUEUE else WORKER_EXCHANGE_TYPE


def amqp_task_queues() -> tuple[Queue, ...]:
    """Broadcast's three task queues as the workers declare them on RabbitMQ: quorum, each
    bound to an exchange of its own name with its name as the routing key."""
    return tuple(
        Queue(
            name,
            Exchange(name, type=exchange_type(name)),
            routing_key=name,
            queue_arguments=dict(QUORUM),
        )
        for name in TASK_QUEUES
    )
