"""The settings service: every operator and dashboard operation, with its checks.

The `broadcast` CLI is a thin shell over this class, and a gateway's own dashboard can
call it the same way. Every refusal is a `SettingsError` whose message is one line naming
the problem; a refused operation changes nothing.

Permissions: `actor=None` is the operator (the CLI on the server, trusted). An actor
`user:ID` may change its own user settings, and an organization's only as an admin.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

import marshmallow

from broadcast_engine.backlog import Backlog
from broadcast_engine.connection_check import check_stored_connection
from broadcast_engine.dead_letters import DeadLetter, DeadLetters
from broadcast_engine.health import HealthKeeper, Kick
from broadcast_engine.runtime import Runtime, runtime
from broadcast_engine.trace_store import TraceStore
from destinations.base import ConnectionCheck, DeliveryContext, Destination
from destinations.registry import UnknownDestinationType, destination_class
from destinations.trace import Trace
from destinations.transport import HttpTransport
from destinations.url_guard import BlockedUrl, NetworkPolicy, check_url
from settings.crypto import SecretBox, SecretsCorrupted
from settings.filter_rules import FilterRulesError
from settings.filter_rules import validate as validate_filter_rules
from settings.masking import MASK_PREFIX, is_mask_of, mask_secrets
from settings.models import OWNER_PATTERN, Circuit, DestinationRecord, Health, HealthRecord
from settings.moments import iso, iso_or_none
from settings.redaction import redact
from settings.store import SettingsStore, TooManyDestinations

MAX_PER_TYPE = 5
# The health shown for a destination whose secrets no configured key opens (a key was
# dropped from BROADCAST_ENCRYPTION_KEYS too early), and its secret fields' value.
SECRETS_UNREADABLE = "secrets_unreadable"
UNREADABLE_SECRET = "(unreadable: no configured key opens it)"
# `status` reads `failing` when the newest delivery-log entries (at most LOSING_LOOKBACK)
# dead-lettered at least LOSING_AT_LEAST traces with nothing delivered in between.
LOSING_LOOKBACK, LOSING_AT_LEAST = 20, 2
# A destination's config (secrets included) as JSON: far above any vendor's needs, far below
# what would slow every fan-out and delivery that reads the record.
MAX_CONFIG_BYTES = 64 * 1024
# What an actor may do with an owner's settings (`SettingsService._authorize`).
READ, CHANGE = "read", "change"
RELEASE_BATCH = 500
ROLES = ("admin", "member")


@dataclass(frozen=True)
class ReplayOutcome:
    """What a replay did, by request id: `sent` again; `skipped_delivered`, whose earlier
    replay was delivered (`again` sends those too); `skipped_no_trace`, whose letter kept
    no trace of this destination's owner to send."""

    sent: list[str]
    skipped_delivered: list[str]
    skipped_no_trace: list[str]

    def as_json(self) -> dict[str, Any]:
        """Counts and the request ids sent, with the HTTP API's field names."""
        return {
            "sent": len(self.sent),
            "skippedDelivered": len(self.skipped_delivered),
            "skippedNoTrace": len(self.skipped_no_trace),
            "requestIds": self.sent,
            "skippedRequestIds": self.skipped_delivered,
        }


class SettingsError(ValueError):
    """A refused operation; the message is one line that names the problem."""


class ConnectionTestFailed(SettingsError):
    """Test Connection did not pass, so nothing was saved."""


class LimitReached(SettingsError):
    """The owner already has the most destinations of that type."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def settings_service(current: Runtime | None = None) -> SettingsService:
    """The service over a runtime's store, keys, transport and engine (the process's
    runtime by default). Cheap: every part it holds is built once by the runtime."""
    current = current or runtime()
    return SettingsService(
        current.store,
        current.box,
        current.transport,
        current.health,
        backlog=current.backlog,
        traces=current.traces,
        dead_letters=current.dead_letters,
        kick=current.kick,
    )


class SettingsService:
    def __init__(
        self,
        store: SettingsStore,
        box: SecretBox,
        transport: HttpTransport,
        health: HealthKeeper,
        *,
        backlog: Backlog,
        traces: TraceStore,
        dead_letters: DeadLetters,
        kick: Kick,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.store = store
        self.box = box
        self.transport = transport
        self.health = health
        self.backlog = backlog
        self.traces = traces
        self.dead_letter_store = dead_letters
        self.kick = kick
        self.policy: NetworkPolicy = transport.policy
        self.clock = clock

    # Owners and organizations

    def authorize(self, owner: str, *, actor: str | None = None) -> None:
        """Refuse (`SettingsError`) unless `actor` may change `owner`'s settings."""
        self._authorize(owner, actor)

    def set_enabled(self, owner: str, enabled: bool, *, actor: str | None = None) -> None:
        self._authorize(owner, actor)
        self.store.set_enabled(owner, enabled)

    def add_member(self, org_id: str, user_id: str, role: str, *, actor: str | None = None) -> None:
        if role not in ROLES:
            raise SettingsError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        self._authorize(f"org:{org_id}", actor)
        self.store.set_member(org_id, user_id, role)

    # Destinations

    def add_destination(
        self,
        owner: str,
        type_: str,
        name: str,
        config: Mapping[str, Any],
        *,
        api_keys: Sequence[str] = (),
        exclude_api_keys: Sequence[str] = (),
        sampling_rate: float = 1.0,
        privacy: bool = False,
        filter_rules: Mapping[str, Any] | None = None,
        enabled: bool = True,
        actor: str | None = None,
    ) -> dict[str, Any]:
        """Validate, run Test Connection, and save only if it passes. Returns the masked view."""
        self._authorize(owner, actor)
        cls = self._destination_class(type_)
        full_config = self._validate_config(cls, config)
        now = self._now()
        record = DestinationRecord(
            id=f"dst_{secrets.token_hex(8)}",
            owner=owner,
            type=type_,
            name=_checked_name(name),
            config={k: v for k, v in full_config.items() if k not in cls.secret_fields()},
            sealed_secrets=self.box.seal(
                {k: v for k, v in full_config.items() if k in cls.secret_fields()}
            ),
            api_keys=_key_list(api_keys),
            exclude_api_keys=_key_list(exclude_api_keys),
            sampling_rate=_checked_rate(sampling_rate),
            privacy=privacy,
            enabled=enabled,
            created_at=now,
            updated_at=now,
            filter_rules=_checked_rules(filter_rules),
        )
        self._require_connection(cls, full_config, record)
        try:
            self.store.add_destination(record, max_per_type=MAX_PER_TYPE)
        except TooManyDestinations as exc:
            raise LimitReached(str(exc)) from None
        self.backlog.create(record.id)
        self.store.set_health(record, {"status": Health.HEALTHY, "checked_at": now})
        if enabled:
            self.health.schedule_first_check(record.id, self.clock().timestamp())
        return self.view(record)

    def update_destination(
        self,
        destination_id: str,
        *,
        name: str | None = None,
        config: Mapping[str, Any] | None = None,
        api_keys: Sequence[str] | None = None,
        exclude_api_keys: Sequence[str] | None = None,
        sampling_rate: float | None = None,
        privacy: bool | None = None,
        enabled: bool | None = None,
        filter_rules: Mapping[str, Any] | None = None,
        actor: str | None = None,
    ) -> dict[str, Any]:
        """Change what is given. `config` is merged into the stored one; a masked secret
        sent back keeps the stored secret. A config change must pass Test Connection.
        `filter_rules={}` removes the rules."""
        record = self._record(destination_id, actor)
        cls = self._destination_class(record.type)
        changes: dict[str, Any] = {"updated_at": self._now()}
        if name is not None:
            changes["name"] = _checked_name(name)
        if api_keys is not None:
            changes["api_keys"] = _key_list(api_keys)
        if exclude_api_keys is not None:
            changes["exclude_api_keys"] = _key_list(exclude_api_keys)
        if sampling_rate is not None:
            changes["sampling_rate"] = _checked_rate(sampling_rate)
        if privacy is not None:
            changes["privacy"] = privacy
        if enabled is not None:
            changes["enabled"] = enabled
        if filter_rules is not None:
            changes["filter_rules"] = _checked_rules(filter_rules)
        full_config = None
        if config is not None:
            stored = self.decrypted_config(record)
            merged = {**stored, **_unmask(config, stored, cls.secret_fields())}
            full_config = self._validate_config(cls, merged)
            secret_names = cls.secret_fields()
            changes["config"] = {k: v for k, v in full_config.items() if k not in secret_names}
            changes["sealed_secrets"] = self.box.seal(
                {k: v for k, v in full_config.items() if k in secret_names}
            )
        updated = replace(record, **changes)
        if full_config is not None:
            self._require_connection(cls, full_config, updated)
        self.store.replace_destination(updated)
        now = self.clock().timestamp()
        if full_config is not None:
            # New credentials passed: a destination in auth_failed recovers, and what it
            # parked meanwhile is delivered.
            self.store.set_health(updated, {"checked_at": changes["updated_at"]})
            self.health.check_passed(updated, now)
        if enabled is True and not record.enabled:
            self.health.schedule_first_check(record.id, now)
            self.kick(record.id, force=True)
        elif enabled is False:
            self.health.unschedule_check(record.id)
        if updated.enabled:
            # The owner changed something: an open circuit closes and the backlog drains.
            self.health.resume_if_waiting(updated, now, why="destination updated")
        return self.view(updated)

    def resume_destination(
        self, destination_id: str, *, actor: str | None = None
    ) -> dict[str, Any]:
        """Close the destination's circuit, end its backoff and drain its backlog now (the
        vendor is back, and its owner or operator says so before the next probe)."""
        record = self._record(destination_id, actor)
        if not record.enabled:
            raise SettingsError(f"destination {record.id} is disabled; enable it to resume")
        was_open = self.health.resume(record, self.clock().timestamp(), why="resumed")
        health = self.store.health(record.id)
        return {
            "id": record.id,
            "circuit_was_open": was_open,
            "circuit": health.circuit.value,
            "health": health.status.value,
        }

    def remove_destination(self, destination_id: str, *, actor: str | None = None) -> None:
        record = self._record(destination_id, actor)
        # Its backlog's traces are released first (they would otherwise live to their
        # TTL). The few a running task holds at this moment keep theirs to the TTL.
        while entries := self.backlog.take_oldest(destination_id, RELEASE_BATCH):
            self.traces.release(record.owner, [e.request_id for e in entries])
        self.store.remove_destination(record)
        self.health.unschedule_check(destination_id)

    def list_destinations(self, owner: str, *, actor: str | None = None) -> list[dict[str, Any]]:
        self._authorize(owner, actor, READ)
        return [self.view(record) for record in self.store.list_destinations(owner)]

    def show_destination(self, destination_id: str, *, actor: str | None = None) -> dict[str, Any]:
        return self.view(self._record(destination_id, actor, READ))

    def test_destination(self, destination_id: str, *, actor: str | None = None) -> dict[str, Any]:
        """Run Test Connection on a saved destination and record the result as its health."""
        record = self._record(destination_id, actor)
        check = self.check_connection(record)
        self.record_check(record, check)
        return {
            "id": record.id,
            "ok": check.ok,
            "message": check.message,
            "status_code": check.status_code,
        }

    def check_connection(self, record: DestinationRecord) -> ConnectionCheck:
        """Run Test Connection on a stored destination (credentials decrypted in memory).

        The message is redacted: it becomes the health reason, an owner event, CLI output.
        """
        cls = self._destination_class(record.type)
        return check_stored_connection(cls, record, self.box, self.transport, self.clock())

    def record_check(self, record: DestinationRecord, check: ConnectionCheck) -> None:
        """Health from a Test Connection: passed, keys rejected, or unreachable."""
        self.health.record_check(record, check, self.clock().timestamp())

    # Status

    def status(self, owner: str | None = None, *, actor: str | None = None) -> list[dict[str, Any]]:
        # Without an owner, an actor sees the owners it may read and hears of no other.
        owners = (
            [owner]
            if owner
            else [each for each in self.store.owners() if self._readable(each, actor)]
        )
        rows = []
        for each in owners:
            self._authorize(each, actor, READ)
            enabled = self.store.is_enabled(each)
            rejected = self.store.rejected_count(each)
            for record in self.store.list_destinations(each):
                health = self.store.health(record.id)
                rows.append(
                    {
                        "id": record.id,
                        "owner": each,
                        "owner_enabled": enabled,
                        "type": record.type,
                        "name": record.name,
                        "enabled": record.enabled,
                        "health": health.status.value,
                        "health_reason": self._redact(health.reason, record),
                        "checked_at": health.checked_at,
                        "counters": self.store.counters(record.id),
                        "owner_rejected_events": rejected,
                        "last_error": self._redact(health.last_error, record),
                        "last_error_at": health.last_error_at,
                        "circuit": health.circuit.value,
                        **self._delivery_state(record, health),
                        "dead_letters": self.dead_letter_store.count(record.id),
                        "next_check": iso_or_none(self.health.next_check(record.id)),
                    }
                )
        return rows

    def deliveries(
        self, destination_id: str, *, limit: int = 20, actor: str | None = None
    ) -> list[dict[str, Any]]:
        record = self._record(destination_id, actor, READ)
        return self.store.attempts(record.id, limit)

    def rejected_events(
        self, owner: str | None = None, limit: int = 20, *, actor: str | None = None
    ) -> list[dict[str, Any]]:
        """The latest rejected events, of `owner` or of every owner the actor may read."""
        if owner is not None:
            self._authorize(owner, actor, READ)
            return self.store.rejected_events(owner, limit)
        if actor is None:
            return self.store.rejected_events(None, limit)
        _check_actor(actor)
        entries = [
            entry
            for each in self.store.owners()
            if self._readable(each, actor)
            for entry in self.store.rejected_events(each, limit)
        ]
        entries.sort(key=lambda entry: str(entry.get("at")), reverse=True)
        return entries[:limit]

    # Notifications, health events, dead letters

    def set_notification_target(
        self, owner: str, url: str, signing_secret: str | None = None, *, actor: str | None = None
    ) -> dict[str, Any]:
        """Where the owner's health events are posted (Standard Webhooks-signed when a
        `whsec_` secret is given)."""
        self._authorize(owner, actor)
        try:
            check_url(url, self.policy)
        except (BlockedUrl, OSError) as exc:
            raise SettingsError(f"--url: {exc}") from None
        if signing_secret is not None and not signing_secret.startswith("whsec_"):
            raise SettingsError("--signing-secret must start with whsec_")
        self.health.notifications.set_target(owner, url, signing_secret)
        return {
            "owner": owner,
            "url": url,
            "signing_secret": mask_secrets({"s": signing_secret}, frozenset({"s"}))["s"],
        }

    def events(self, owner: str, *, limit: int = 50, actor: str | None = None) -> list[dict]:
        """The owner's latest health events, newest first; `at` in ISO 8601."""
        self._authorize(owner, actor, READ)
        return [
            {**event, "at": iso(float(event["at"]))}
            for event in self.health.notifications.events(owner, limit)
        ]

    def dead_letters(
        self,
        destination_id: str,
        *,
        since: float | None = None,
        until: float | None = None,
        ids: Sequence[str] | None = None,
        limit: int | None = None,
        actor: str | None = None,
    ) -> list[DeadLetter]:
        record = self._record(destination_id, actor, READ)
        return self.dead_letter_store.list(
            record.id, since=since, until=until, ids=list(ids) if ids else None, limit=limit
        )

    @staticmethod
    def unmatched_letter_ids(ids: Iterable[str], letters: Iterable[DeadLetter]) -> list[str]:
        """The ids (request ids or dead-letter ids) that name none of `letters`."""
        known = {name for letter in letters for name in (letter.id, letter.request_id)}
        return sorted(set(ids) - known)

    def replay(
        self,
        destination_id: str,
        letters: Iterable[DeadLetter],
        *,
        again: bool = False,
        on_progress: Callable[[DeadLetter], object] | None = None,
        actor: str | None = None,
    ) -> ReplayOutcome:
        """Re-queue the trace of each request among `letters` once (a request dead-lettered
        twice has two letters), skipping a request whose earlier replay was delivered
        unless `again`; a replay queued but not delivered yet, or failed again, is sent
        again. Vendor ids are derived from the request and destination, so a trace sent
        twice still lands once."""
        record = self._record(destination_id, actor)
        if not record.enabled:
            raise SettingsError(f"destination {record.id} is disabled; enable it before replaying")
        sent: list[str] = []
        delivered: list[str] = []
        no_trace: list[str] = []
        seen: set[str] = set()
        went: set[str] = set()
        for letter in letters:
            request = letter.request_id
            if request not in seen:
                seen.add(request)
                if letter.replay_delivered_at is not None and not again:
                    delivered.append(request)
                elif self._requeue(record, letter):
                    sent.append(request)
                    went.add(request)
                else:
                    no_trace.append(request)
            if request in went:
                # Every letter of a request sent is marked: its trace went out again.
                now = self.clock().timestamp()
                self.dead_letter_store.mark_replayed(record.id, letter.id, now)
            if on_progress is not None:
                on_progress(letter)
        return ReplayOutcome(sent, delivered, no_trace)

    def _requeue(self, record: DestinationRecord, letter: DeadLetter) -> bool:
        """Append a dead letter's trace to the backlog again (stored anew if it expired,
        with one more hold)."""
        if letter.trace is None or letter.trace.get("owner") != record.owner:
            return False
        trace = Trace.from_wire(letter.trace)
        stored = self.traces.restore(trace)
        with self.store.redis.pipeline(transaction=False) as pipe:
            self.backlog.append(
                pipe,
                record.id,
                trace.request_id,
                self.clock().timestamp(),
                stored.size,
                kick=False,
                replay=True,
            )
            pipe.execute()
        self.kick(record.id)
        return True

    def _delivery_state(self, record: DestinationRecord, health: HealthRecord) -> dict[str, Any]:
        """What the destination's backlog is doing now, for `status`."""
        now = self.clock().timestamp()
        backlog = self.backlog.stats(record.id, now)
        if health.status is Health.AUTH_FAILED:
            state, next_attempt = "paused: credentials rejected", self.health.next_check(record.id)
        elif health.circuit is Circuit.OPEN:
            state, next_attempt = "circuit open: probing", health.probe_at
        elif health.backoff_until > now:
            state, next_attempt = "backing off: the vendor asked to slow down", health.backoff_until
        else:
            state, next_attempt = "sending", None
        shown_health, reason = health.status.value, self._redact(health.reason, record)
        latest = self.store.attempts(record.id, LOSING_LOOKBACK)
        if self._secrets(record) is None:
            shown_health = SECRETS_UNREADABLE
            reason = "no configured key opens its secrets: add the key that sealed them"
        elif health.status is Health.HEALTHY and health.circuit is Circuit.OPEN:
            shown_health = "circuit_open"
        elif health.status is Health.HEALTHY and health.consecutive_failures:
            shown_health = "failing"
        elif health.status is Health.HEALTHY and _losing_every_trace(latest):
            # The vendor answers, but refuses every trace lately (a 400 to a payload it
            # cannot take): healthy would hide that traces are being lost. One refused
            # trace among delivered ones is the trace's fault, not the destination's.
            shown_health = "failing"
            reason = f"the latest traces were dead-lettered: {latest[0].get('error') or '-'}"
        return {
            "health": shown_health,
            "health_reason": self._redact(reason, record),
            "delivery": state,
            "next_attempt": iso_or_none(next_attempt),
            "consecutive_failures": health.consecutive_failures,
            "next_probe": iso_or_none(health.probe_at) if health.circuit is Circuit.OPEN else None,
            "backlog": backlog.depth,
            "in_flight": backlog.in_flight,
            "backlog_bytes": backlog.bytes,
            "oldest_waiting_since": iso_or_none(backlog.oldest_accepted_at),
        }

    # Helpers shared with the deliver task

    def decrypted_config(self, record: DestinationRecord) -> dict[str, Any]:
        return {**record.config, **self.box.open(record.sealed_secrets)}

    def view(self, record: DestinationRecord) -> dict[str, Any]:
        """The record as shown to people and dashboards: secrets masked, never decrypted out.
        A destination whose secrets no configured key opens shows the health
        `secrets_unreadable` and its secret fields as unreadable; the rest stays readable."""
        data = asdict(record)
        data.pop("sealed_secrets")
        cls = self._destination_class(record.type)
        secrets = self._secrets(record)
        shown = (
            mask_secrets(secrets, cls.secret_fields())
            if secrets is not None
            else {name: UNREADABLE_SECRET for name in sorted(cls.secret_fields())}
        )
        data["config"] = {**record.config, **shown}
        data["api_keys"] = list(record.api_keys)
        data["exclude_api_keys"] = list(record.exclude_api_keys)
        health = self.store.health(record.id).status.value
        data["health"] = health if secrets is not None else SECRETS_UNREADABLE
        return data

    def _secrets(self, record: DestinationRecord) -> dict[str, Any] | None:
        """The record's secrets, or None when no configured key opens them."""
        try:
            return self.box.open(record.sealed_secrets)
        except SecretsCorrupted:
            return None

    def _redact(self, text: str, record: DestinationRecord) -> str:
        return redact(text, self._secrets(record) or {}) if text else text

    # Internals

    def _authorize(self, owner: str, actor: str | None, action: str = CHANGE) -> None:
        """Refuse unless `actor` may `action` (READ or CHANGE) `owner`'s settings."""
        if not OWNER_PATTERN.match(owner):
            raise SettingsError(f"owner must be user:ID or org:ID, not {owner!r}")
        if actor is None or self._may(owner, actor, action):
            return
        kind, owner_id = owner.split(":", 1)
        if kind == "org" and action == CHANGE:
            raise SettingsError(f"{actor} is not an admin of organization {owner_id}")
        raise SettingsError(f"{actor} may not {action} the settings of {owner}")

    def _may(self, owner: str, actor: str, action: str) -> bool:
        """A user reads and changes its own settings; an organization's members read its
        settings and only its admins change them. The operator (no actor) may do anything."""
        _check_actor(actor)
        kind, owner_id = owner.split(":", 1)
        actor_id = actor.split(":", 1)[1]
        if kind == "user":
            return owner_id == actor_id
        role = self.store.member_role(owner_id, actor_id)
        return role == "admin" or (action == READ and role is not None)

    def _readable(self, owner: str | None, actor: str | None) -> bool:
        if actor is None:
            return True
        if owner is None or OWNER_PATTERN.match(owner) is None:
            return False
        return self._may(owner, actor, READ)

    def _record(
        self, destination_id: str, actor: str | None, action: str = CHANGE
    ) -> DestinationRecord:
        """The destination, if `actor` may `action` it. One that exists but that the actor
        may not even read is "not found", exactly like one that does not exist."""
        record = self.store.get_destination(destination_id)
        if record is None or not self._readable(record.owner, actor):
            raise SettingsError(f"no destination {destination_id!r}")
        self._authorize(record.owner, actor, action)
        return record

    @staticmethod
    def _destination_class(type_: str) -> type[Destination]:
        try:
            return destination_class(type_)
        except UnknownDestinationType as exc:
            raise SettingsError(str(exc)) from None

    def _validate_config(self, cls: type[Destination], config: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(config, Mapping):
            raise SettingsError("config must be a JSON object")
        size = len(json.dumps(config, default=str).encode())
        if size > MAX_CONFIG_BYTES:
            raise SettingsError(f"config is {size} bytes; at most {MAX_CONFIG_BYTES} are allowed")
        for name, value in config.items():
            if (
                isinstance(value, str)
                and value.startswith(MASK_PREFIX)
                and name in cls.secret_fields()
            ):
                raise SettingsError(f"config field {name!r}: a masked value needs a stored secret")
        try:
            validated = cls.config_schema().load(dict(config))
        except marshmallow.ValidationError as exc:
            raise SettingsError(_describe_config_error(cls.slug, exc.messages)) from None
        for name, url in cls.config_urls(validated).items():
            try:
                check_url(url, self.policy)
            except (BlockedUrl, OSError) as exc:
                raise SettingsError(f"config field {name!r}: {exc}") from None
        return validated

    def _check(
        self, cls: type[Destination], config: Mapping[str, Any], record: DestinationRecord
    ) -> ConnectionCheck:
        context = DeliveryContext(destination_id=record.id, owner=record.owner, now=self.clock())
        return cls(config, self.transport).test_connection(context)

    def _require_connection(
        self, cls: type[Destination], config: Mapping[str, Any], record: DestinationRecord
    ) -> None:
        check = self._check(cls, config, record)
        if not check.ok:
            message = redact(
                check.message, {k: config[k] for k in cls.secret_fields() if k in config}
            )
            raise ConnectionTestFailed(f"Test Connection failed, nothing saved: {message}")

    def _now(self) -> str:
        return self.clock().isoformat()


def _losing_every_trace(latest: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the newest delivery-log entries (newest first) dead-lettered every trace
    they carried, at least `LOSING_AT_LEAST` traces in all, with nothing delivered since."""
    lost = 0
    for entry in latest:
        if entry.get("next") != "dead-lettered":
            break
        lost += int(entry.get("traces") or 1)
    return lost >= LOSING_AT_LEAST


def _unmask(
    config: Mapping[str, Any], stored: Mapping[str, Any], secret_names: frozenset[str]
) -> dict[str, Any]:
    """Put stored secrets back where the caller sent their masks unchanged."""
    result = dict(config)
    for name in secret_names & set(config):
        sent, kept = config[name], stored.get(name)
        if isinstance(sent, str) and isinstance(kept, str) and is_mask_of(sent, kept):
            result[name] = kept
        elif isinstance(sent, Mapping) and isinstance(kept, Mapping):
            result[name] = {
                key: kept[key]
                if isinstance(value, str) and key in kept and is_mask_of(value, kept[key])
                else value
                for key, value in sent.items()
            }
    return result


def _check_actor(actor: str) -> None:
    if not actor.startswith("user:") or not OWNER_PATTERN.match(actor):
        raise SettingsError(f"actor must be user:ID, not {actor!r}")


def _describe_config_error(slug: str, messages: Any) -> str:
    if isinstance(messages, Mapping):
        for name, problems in messages.items():
            text = " ".join(problems) if isinstance(problems, list) else str(problems)
            return f"{slug} config field {name!r}: {text}"
    return f"{slug} config: {messages}"


def _checked_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 100:
        raise SettingsError("name must be 1 to 100 characters")
    return name


def _checked_rate(rate: float) -> float:
    if not 0.0 < rate <= 1.0:
        raise SettingsError(f"sampling rate must be in (0, 1], not {rate}")
    return float(rate)


def _checked_rules(rules: Mapping[str, Any] | None) -> dict[str, Any] | None:
    try:
        return validate_filter_rules(rules)
    except FilterRulesError as exc:
        raise SettingsError(str(exc)) from None


def _key_list(keys: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(key.strip() for key in keys if key.strip()))
