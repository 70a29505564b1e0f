"""Test Connection of a stored destination: the vendor's own check, credentials
decrypted in memory, the answer redacted of them (it becomes a health reason, an owner
event, CLI output). Used by beat's re-validation and by the settings service."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from destinations.base import ConnectionCheck, DeliveryContext, Destination
from destinations.transport import HttpTransport
from settings.crypto import SecretBox
from settings.models import DestinationRecord
from settings.redaction import redact


def check_stored_connection(
    cls: type[Destination],
    record: DestinationRecord,
    box: SecretBox,
    transport: HttpTransport,
    now: datetime,
) -> ConnectionCheck:
    """Run `cls`'s Test Connection for `record`; the message never quotes a secret."""
    secrets = box.open(record.sealed_secrets)
    context = DeliveryContext(destination_id=record.id, owner=record.owner, now=now)
    check = cls({**record.config, **secrets}, transport).test_connection(context)
    return replace(check, message=redact(check.message, secrets)) if check.message else check
