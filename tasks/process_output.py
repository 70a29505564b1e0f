"""The worker and beat programs, printing JSON when `BROADCAST_LOG_FORMAT=json`.

Celery's worker and beat print a banner (and the worker a few notices on shutdown) with
`print`, not through logging, and warn before their logging is set up, so a log
formatter alone leaves those lines as text. With the JSON format these programs write
them as JSON log lines instead (`broadcast.worker.starting`, `broadcast.beat.starting`,
`broadcast.worker.notice`), and route warnings into logging from their first line. The
text format keeps Celery's banner. The app uses these classes (`tasks.app.BroadcastCelery`);
only the `celery worker` and `celery beat` commands load this module.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

import celery.apps.worker
from celery.apps.beat import Beat
from celery.apps.worker import Worker

from broadcast_interfaces.log_format import json_before_setup, json_line
from settings.config import load_config

logger = logging.getLogger("broadcast")


def _json() -> bool:
    return load_config().log_format == "json"


def _say_as_json(message: str, f: Any = sys.__stderr__) -> None:
    """Celery's `safe_say` (its shutdown notices), as one JSON line."""
    f.write(json_line("broadcast.worker.notice %s", message.strip()) + "\n")
    f.flush()


class BroadcastWorker(Worker):
    """`celery worker`; with JSON logs, its banner is a log line and its notices JSON."""

    if TYPE_CHECKING:  # set by Celery's WorkController.setup_instance; not in celery-types
        hostname: str
        concurrency: int

    def on_before_init(self, quiet: bool = False, **kwargs: Any) -> None:
        if _json():
            json_before_setup()  # before Celery's SecurityWarning check
            # Celery prints its shutdown notices through this module-level function.
            celery.apps.worker.safe_say = _say_as_json  # type: ignore[attr-defined]  # not in celery-types
        super().on_before_init(quiet=quiet, **kwargs)

    def emit_banner(self) -> None:
        if not _json():
            super().emit_banner()
            return
        logger.info(
            "broadcast.worker.starting hostname=%s concurrency=%s queues=%s",
            self.hostname,
            self.concurrency,
            ",".join(sorted(self.app.amqp.queues.consume_from)),
        )


class BroadcastBeat(Beat):
    """`celery beat`; with JSON logs, its banner is a log line."""

    if TYPE_CHECKING:  # set by celery.apps.beat.Beat.__init__; not in celery-types
        scheduler_cls: str
        schedule: str
        max_interval: float

    def run(self) -> None:
        if _json():
            json_before_setup()
            self.quiet = True  # the banner is printed before logging is set up
        super().run()

    def setup_logging(self, colorize: bool | None = None) -> None:
        super().setup_logging(colorize)
        if self.quiet and _json():
            logger.info(
                "broadcast.beat.starting scheduler=%s schedule=%s max_interval=%s",
                self.scheduler_cls,
                self.schedule,
                self.max_interval,
            )
