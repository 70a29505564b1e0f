"""The Celery app and the project's one task decorator.

Every task is declared with `broadcast_task(...)`, whose keyword parameters are explicit,
so a misspelt option is a TypeError at import instead of a silently stored attribute.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from functools import cached_property
from typing import Any, NoReturn

from celery import Celery, Task
from celery.exceptions import Reject, Retry
from celery.signals import after_setup_logger, after_setup_task_logger, worker_init
from kombu.exceptions import OperationalError

from settings.config import ConfigurationError

logger = logging.getLogger("broadcast")


class BroadcastCelery(Celery):
    """Celery, whose worker and beat programs print JSON lines when asked
    (`tasks.process_output`, loaded by those commands only)."""

    # Imported when a worker or beat starts: the gateway's `.delay()` never loads them.
    @cached_property
    def Worker(self) -> Any:
        from tasks.process_output import BroadcastWorker

        return self.subclass_with_self(BroadcastWorker)

    @cached_property
    def Beat(self) -> Any:
        from tasks.process_output import BroadcastBeat

        return self.subclass_with_self(BroadcastBeat)


app = BroadcastCelery("broadcast")
app.config_from_object("celeryconfig")


class BroadcastTask(Task):
    """Base for every task: logs failures with stable event names and no arguments.

    Arguments are left out of logs on purpose: they carry prompts and completions. For the
    same reason `describe_args` replaces Celery's repr of the arguments in messages and
    task events (which Flower shows) with ids; it also spares the gateway the cost of
    that repr on every `.delay()`.
    """

    describe_args: Callable[..., str] | None = None
    # Sends the task event of a `FinalState` (REJECTED, or FAILURE without a traceback).
    Request = "tasks.outcome_request:OutcomeRequest"

    def apply_async(  # type: ignore[override]  # takes all Celery's options, passes them on
        self, args: Any = None, kwargs: Any = None, **options: Any
    ) -> Any:
        if self.describe_args is not None and "argsrepr" not in options:
            options["argsrepr"] = self.describe_args(*(args or ()), **(kwargs or {}))
            options.setdefault("kwargsrepr", "{}")
        return super().apply_async(args, kwargs, **options)

    def retry_or_requeue(self, countdown: float) -> NoReturn:
        """Retry this task after `countdown` seconds. When the retry cannot be sent (the
        broker is down too), the message goes back to its queue instead: Celery's `retry`
        turns a failed send into `Reject(requeue=False)`, which would acknowledge the only
        copy of the message away."""
        try:
            raise self.retry(countdown=countdown, max_retries=None)
        except Retry:
            raise
        except (Reject, OperationalError, OSError) as exc:
            raise Reject(f"retry not sent ({type(exc).__name__}): requeued", requeue=True) from None

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        logger.error(
            "broadcast.task.failed task=%s id=%s error=%s", self.name, task_id, type(exc).__name__
        )


def broadcast_task(
    *,
    name: str,
    max_retries: int | None = 0,
    describe_args: Callable[..., str] | None = None,
    send_events: bool = True,
) -> Callable[[Callable[..., Any]], Task]:
    """Register a bound task with the project's defaults (acks late, no result).

    Queues come from `task_routes` in celeryconfig.py, the one place that routes tasks;
    time limits come from celeryconfig.py too. `describe_args(*args, **kwargs)` says how
    the task's arguments appear in messages and Flower (see `BroadcastTask`).
    `send_events=False`: the worker sends no task event for it, so Flower does not list
    it (beat's frequent housekeeping, which would crowd out the tasks that carry traces).
    """

    def decorate(function: Callable[..., Any]) -> Task:
        options: dict[str, Any] = {
            "name": name,
            "bind": True,
            "base": BroadcastTask,
            "acks_late": True,
            "reject_on_worker_lost": True,
            "ignore_result": True,
            "max_retries": max_retries,
            "send_events": send_events,
            "describe_args": staticmethod(describe_args) if describe_args else None,
        }
        return app.task(**options)(function)

    return decorate


@worker_init.connect
def _check_settings_at_start(**_: Any) -> None:
    """Fail the worker's start, not its first delivery, when settings are missing; the
    engine sends its tasks through this app from now on (one producer pool per process)."""
    from broadcast_engine.runtime import runtime, use_task_app

    use_task_app(app)
    current = runtime()
    try:
        current.box  # noqa: B018 - building the box validates the encryption keys
        current.store.redis.ping()
    except ConfigurationError as exc:
        logger.critical("broadcast.start.refused reason=%s", exc)
        raise SystemExit(f"broadcast: {exc}") from None


@worker_init.connect
def _preload_worker_modules(**_: Any) -> None:
    """Import what the tasks use before the pool forks. Prefork children then share the
    modules (copy-on-write) instead of each importing them on its first task: with 8
    children that was seconds of CPU, taken from the first traffic after every start."""
    import broadcast_engine.intake  # noqa: F401 - fan-out's work, which the task imports lazily
    from destinations.registry import load_all

    load_all()
    # Keep the collector away from what was just imported: its passes write to every
    # tracked object's header, which copies each shared page into every child.
    gc.freeze()


@after_setup_logger.connect
@after_setup_task_logger.connect
def _install_log_format(logger: logging.Logger, **_: Any) -> None:
    """`BROADCAST_LOG_FORMAT=json`: Celery's handlers print one JSON object per line."""
    from broadcast_engine.runtime import runtime
    from broadcast_interfaces.log_format import install

    install(logger, runtime().config.log_format)
