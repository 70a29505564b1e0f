"""BigQuery: one row per request, streamed with `tabledata.insertAll` and a stable insertId.

| what | wire |
| --- | --- |
| request | `POST {endpoint}/bigquery/v2/projects/{p}/datasets/{d}/tables/{t}/insertAll` |
| endpoint | `https://bigquery.googleapis.com` unless `endpoint` is set |
| auth | `Authorization: Bearer <token>`, from the service-account key's JWT grant |
|  | at its `token_uri` (google-auth signs; the request goes through the shared transport, |
|  | so the URL guard and address pinning cover `token_uri` too) |
| body | `{"skipInvalidRows": true, "ignoreUnknownValues": false, "rows": [{insertId, json}]}` |
| row | `warehouse_schema.request_row`, lower-case names; JSON columns as JSON text; `tags` |
| insertId | derived from (request id, destination id): BigQuery drops a row it already has |
|  | (best effort, about a minute), so retries and reclaimed batches add nothing twice |

At most 500 rows and 9 MB per request (insertAll's recommended row count; its limit is
10 MB). A row BigQuery refuses (`insertErrors`) fails only its trace; the rest of the
request is written (`skipInvalidRows`). A field the table lacks ("no such field") is a
configuration error (the destination is marked failing). 401 and an `invalid_grant` are
`auth_failed`; 403 is `auth_failed` unless its reason is a quota or rate limit
(retryable); 404 (the table is gone) is permanent.

Test Connection: the token, the table's metadata (project, dataset, table and every column
with its type), then `testIamPermissions` for `bigquery.tables.updateData`: read-only
access fails the test.

Needs the `bigquery` extra (`google-auth`); without it Test Connection says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import orjson
from marshmallow import ValidationError, fields, validates

from destinations.base import (
    BatchLimits,
    ConfigSchema,
    ConnectionCheck,
    DeliveryContext,
    DeliveryResult,
    EncodedItem,
    HttpDestination,
    describe_response,
    not_attempted,
    result_from_transport,
)
from destinations.config_fields import url_field
from destinations.ids import derived_hex
from destinations.json_body import compact_json, json_text
from destinations.outcomes import Outcome
from destinations.registry import register
from destinations.trace import Trace
from destinations.transport import (
    HeaderTransport,
    HttpRequest,
    HttpTransport,
    TransportResult,
    join_url,
)
from destinations.warehouse_schema import (
    BIGQUERY,
    DEFAULT_BIGQUERY_TABLE,
    Column,
    Kind,
    check_bigquery_name,
    column_name,
    columns,
    request_row,
)

DEFAULT_ENDPOINT = "https://bigquery.googleapis.com"
# The one scope all three methods accept: `bigquery.insertdata` is enough for insertAll but
# not for tables.get or testIamPermissions (Test Connection), which BigQuery then refuses
# with "insufficient authentication scopes" (the methods' scopes in BigQuery's discovery
# document). What the account may do is still decided by its IAM roles.
SCOPE = "https://www.googleapis.com/auth/bigquery"
INSERT_PERMISSION = "bigquery.tables.updateData"
MAX_ROWS = 500
MAX_REQUEST_BYTES = 9 * 1024 * 1024
_RETRYABLE_REASONS = frozenset({"quotaExceeded", "rateLimitExceeded", "backendError"})
# Table field types each of our kinds accepts (the API's legacy and standard names).
_COMPATIBLE = {
    Kind.ID: ("STRING",),
    Kind.TEXT: ("STRING",),
    Kind.CODE: ("STRING",),
    Kind.TIMESTAMP: ("TIMESTAMP",),
    Kind.DURATION: ("FLOAT", "FLOAT64", "NUMERIC", "BIGNUMERIC"),
    Kind.COUNT: ("INTEGER", "INT64"),
    Kind.COST: ("FLOAT", "FLOAT64", "NUMERIC", "BIGNUMERIC"),
    Kind.JSON: ("JSON",),
    Kind.TAGS: ("STRING",),
}


class BigQueryConfig(ConfigSchema):
    project_id = fields.String(required=True)
    service_account_json = fields.String(required=True, metadata={"secret": True})
    dataset = fields.String(load_default="openrouter")
    table = fields.String(load_default=DEFAULT_BIGQUERY_TABLE)
    endpoint = url_field(load_default=None, allow_none=True)

    @validates("project_id")
    def _project(self, value: str, **_: Any) -> None:
        _checked("project_id", value)

    @validates("dataset")
    def _dataset(self, value: str, **_: Any) -> None:
        _checked("dataset", value)

    @validates("table")
    def _table(self, value: str, **_: Any) -> None:
        _checked("table", value)

    @validates("service_account_json")
    def _key(self, value: str, **_: Any) -> None:
        service_account_info(value)


def _checked(field: str, value: str) -> None:
    try:
        check_bigquery_name(field, value)
    except ValueError as exc:
        raise ValidationError(str(exc).split(": ", 1)[1]) from None


def service_account_info(text: str) -> dict[str, Any]:
    """The key file's fields; ValidationError (never quoting the key) when it is not one."""
    try:
        info = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ValidationError("Must be the service-account key file's JSON.") from None
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise ValidationError('Must be a service-account key ("type": "service_account").')
    for name in ("client_email", "private_key", "token_uri"):
        if not isinstance(info.get(name), str) or not info[name]:
            raise ValidationError(f"The key has no {name}.")
    parts = urlsplit(info["token_uri"])
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValidationError("The key's token_uri must be an http(s) URL.")
    return info


def insert_id(trace: Trace, destination_id: str) -> str:
    return derived_hex(trace.request_id, destination_id, "bigquery-row", nbytes=16)


def encode_row(trace: Trace, destination_id: str) -> dict[str, Any]:
    """Pure: the insertAll row of this trace (lower-case names, JSON columns as text)."""
    row = request_row(trace, destination_id)
    return {
        column_name(BIGQUERY, column): _value(column, row[column.name])
        for column in columns(BIGQUERY)
    }


def _value(column: Column, value: Any) -> Any:
    if value is None:
        return None
    if column.kind is Kind.TIMESTAMP:
        return value.isoformat().replace("+00:00", "Z")
    if column.kind is Kind.JSON:
        return json_text(value)
    return value


class _Tokens:
    """google-auth credentials per key, kept while valid (a grant per batch would double the
    requests); keyed by a hash of the key text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._credentials: dict[str, Any] = {}

    def token(self, key_text: str, transport: HttpTransport | HeaderTransport) -> str:
        """Raises google.auth.exceptions.RefreshError / TransportError."""
        from google.oauth2 import service_account

        fingerprint = hashlib.sha256(key_text.encode()).hexdigest()
        with self._lock:
            credentials = self._credentials.get(fingerprint)
        if credentials is None:
            credentials = service_account.Credentials.from_service_account_info(
                orjson.loads(key_text), scopes=[SCOPE]
            )
        if not credentials.valid:
            credentials.refresh(_google_request(transport))
            with self._lock:
                self._credentials[fingerprint] = credentials
        token: str = credentials.token
        return token

    def forget(self, key_text: str) -> None:
        """Drop the key's token: BigQuery refused it (401) before its stated expiry (revoked,
        or the key deleted), so the next batch asks for a new one instead of being refused
        with it until it expires."""
        fingerprint = hashlib.sha256(key_text.encode()).hexdigest()
        with self._lock:
            self._credentials.pop(fingerprint, None)


_TOKENS = _Tokens()


def _google_request(transport: HttpTransport | HeaderTransport) -> Any:
    """google-auth's transport interface over ours (guarded, pinned, never raising)."""
    import google.auth.exceptions
    import google.auth.transport

    class Response(google.auth.transport.Response):
        def __init__(self, result: TransportResult) -> None:
            self._result = result

        @property
        def status(self) -> int:
            return self._result.status_code or 0

        @property
        def headers(self) -> Mapping[str, str]:
            return self._result.headers

        @property
        def data(self) -> bytes:
            return self._result.body

    class Request(google.auth.transport.Request):
        def __call__(
            self,
            url: str,
            method: str = "GET",
            body: bytes | str | None = None,
            headers: Mapping[str, str] | None = None,
            timeout: float | None = None,
            **_kw: Any,
        ) -> Response:
            data = body.encode() if isinstance(body, str) else (body or b"")
            result = transport.send(HttpRequest(method, url, dict(headers or {}), data))
            if result.status_code is None:
                raise google.auth.exceptions.TransportError(f"token_uri {result.error}")
            return Response(result)

    return Request()


@register
class BigQueryDestination(HttpDestination):
    slug = "bigquery"
    display_name = "Google BigQuery"
    config_schema = BigQueryConfig
    batch_limits = BatchLimits(max_items=MAX_ROWS, max_bytes=MAX_REQUEST_BYTES)

    @classmethod
    def config_urls(cls, config: Mapping[str, Any]) -> dict[str, str]:
        """The URL fields and the key file's `token_uri`: the token request goes there with
        a signed assertion, so it is guarded on save like every URL a user can name."""
        urls = super().config_urls(config)
        key = config.get("service_account_json")
        if key:
            urls["service_account_json.token_uri"] = service_account_info(key)["token_uri"]
        return urls

    def __init__(self, config: Mapping[str, Any], transport: HttpTransport) -> None:
        super().__init__(config, transport)
        # The request headers of this instance's batches: `deliver_batch` adds the access
        # token it obtained for them (an instance serves one delivery run).
        self._headers: dict[str, str] = {"Content-Type": "application/json"}

    def _table_url(self, suffix: str = "") -> str:
        base = self.config.get("endpoint") or DEFAULT_ENDPOINT
        path = "/bigquery/v2/projects/{}/datasets/{}/tables/{}".format(
            *(quote(self.config[k], safe="") for k in ("project_id", "dataset", "table"))
        )
        return join_url(base, path + suffix)

    def _authorized(self) -> dict[str, str] | DeliveryResult:
        """The Authorization header, or the result that stops the batch."""
        try:
            import google.auth.exceptions
        except ImportError:
            return DeliveryResult(
                Outcome.PERMANENT,
                None,
                0.0,
                error="the bigquery extra is not installed (pip install 'broadcast[bigquery]')",
            )
        try:
            token = _TOKENS.token(self.config["service_account_json"], self.transport)
        except google.auth.exceptions.TransportError as exc:
            outcome = Outcome.PERMANENT if "blocked" in str(exc) else Outcome.RETRYABLE
            return DeliveryResult(outcome, None, 0.0, error=f"token exchange failed: {exc}")
        except google.auth.exceptions.RefreshError as exc:
            retryable = getattr(exc, "retryable", False)
            outcome = Outcome.RETRYABLE if retryable else Outcome.AUTH_FAILED
            return DeliveryResult(outcome, None, 0.0, error=f"token refused: {exc.args[0]}")
        return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def build_request(self, trace: Trace, context: DeliveryContext) -> HttpRequest:
        raise NotImplementedError("BigQuery sends batches (deliver_batch)")

    def encode_item(self, trace: Trace, context: DeliveryContext) -> EncodedItem:
        item = {
            "insertId": insert_id(trace, context.destination_id),
            "json": encode_row(trace, context.destination_id),
        }
        return EncodedItem(item, len(compact_json(item)))

    def deliver_batch(
        self, traces: Sequence[Trace], context: DeliveryContext
    ) -> list[DeliveryResult]:
        headers = self._authorized()
        if isinstance(headers, DeliveryResult):
            return [headers] + [not_attempted(headers)] * (len(traces) - 1)
        self._headers = headers
        results = super().deliver_batch(traces, context)
        if any(r.status_code == 401 for r in results):
            _TOKENS.forget(self.config["service_account_json"])
        # The access token is derived at run time, so the engine's redaction (which knows
        # the configured secrets) cannot know it: an error echoing it is scrubbed here.
        token = headers["Authorization"].removeprefix("Bearer ")
        return [
            dataclasses.replace(r, error=r.error.replace(token, "[redacted]"))
            if r.error and token in r.error
            else r
            for r in results
        ]

    def batch_request(self, payloads: Sequence[Any], context: DeliveryContext) -> HttpRequest:
        body = {
            "kind": "bigquery#tableDataInsertAllRequest",
            "skipInvalidRows": True,
            "ignoreUnknownValues": False,
            "rows": list(payloads),
        }
        return HttpRequest(
            "POST",
            self._table_url("/insertAll"),
            self._headers,
            compact_json(body),
            response_limit=4 << 20,
        )

    def interpret(self, result: TransportResult) -> DeliveryResult:
        if result.status_code in (400, 403, 404):
            reason, message = _error(result)
            error = f"BigQuery {result.status_code} {reason}: {message}"[:400]
            if reason in _RETRYABLE_REASONS:
                return result_from_transport(result, Outcome.RETRYABLE, error)
            if result.status_code == 403:
                return result_from_transport(result, Outcome.AUTH_FAILED, error)
            answer = result_from_transport(result, Outcome.PERMANENT, error)
            return dataclasses.replace(answer, config_error=True)
        return result_from_transport(result)

    def interpret_batch(
        self, result: TransportResult, traces: Sequence[Trace]
    ) -> list[DeliveryResult]:
        answer = self.interpret(result)
        if answer.outcome is not Outcome.DELIVERED:
            return [answer] * len(traces)
        try:
            refused = orjson.loads(result.body or b"{}").get("insertErrors") or []
        except (orjson.JSONDecodeError, AttributeError):
            refused = []
        by_index = {item.get("index"): item.get("errors") or [] for item in refused}
        results = []
        for index, _trace in enumerate(traces):
            problems = by_index.get(index)
            if not problems:
                results.append(answer)
                continue
            text = "; ".join(
                f"{p.get('location') or '-'}: {p.get('message') or p.get('reason')}"
                for p in problems
            )
            unknown = any("no such field" in (p.get("message") or "") for p in problems)
            results.append(
                DeliveryResult(
                    Outcome.PERMANENT,
                    result.status_code,
                    result.duration_ms,
                    error=f"BigQuery refused the row: {text}"[:400],
                    config_error=unknown,
                )
            )
        return results

    def test_connection(self, context: DeliveryContext) -> ConnectionCheck:
        headers = self._authorized()
        if isinstance(headers, DeliveryResult):
            return ConnectionCheck(headers.outcome, headers.error or "token exchange failed")
        table = "{}.{}.{}".format(*(self.config[k] for k in ("project_id", "dataset", "table")))
        result = self.transport.send(
            HttpRequest("GET", self._table_url(), headers, response_limit=1 << 20)
        )
        if result.status_code == 401:
            _TOKENS.forget(self.config["service_account_json"])
        failed = _check(self.interpret(result), result)
        if failed is not None:
            return failed
        try:
            fields_ = orjson.loads(result.body)["schema"]["fields"]
            found = {f["name"].lower(): (f["type"], f.get("mode", "NULLABLE")) for f in fields_}
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return ConnectionCheck(Outcome.PERMANENT, f"no table schema in {table}'s metadata")
        problem = table_problem(table, found)
        if problem:
            return ConnectionCheck(Outcome.PERMANENT, problem)
        body = compact_json({"permissions": [INSERT_PERMISSION]})
        result = self.transport.send(
            HttpRequest("POST", self._table_url(":testIamPermissions"), headers, body)
        )
        failed = _check(self.interpret(result), result)
        if failed is not None:
            return failed
        granted = orjson.loads(result.body or b"{}").get("permissions") or []
        if INSERT_PERMISSION not in granted:
            return ConnectionCheck(
                Outcome.AUTH_FAILED,
                f"the service account may read {table} but not insert rows "
                f"({INSERT_PERMISSION} missing: grant BigQuery Data Editor on the dataset)",
            )
        return ConnectionCheck(Outcome.DELIVERED, f"table {table} fits and may be written", 200)


def _check(answer: DeliveryResult, result: TransportResult) -> ConnectionCheck | None:
    if answer.outcome is Outcome.DELIVERED:
        return None
    if result.status_code is None:
        prefix = "refused" if result.refused else "unreachable"
        return ConnectionCheck(answer.outcome, f"{prefix}: {result.error}")
    return ConnectionCheck(
        answer.outcome, answer.error or describe_response(result), result.status_code
    )


def _error(result: TransportResult) -> tuple[str, str]:
    try:
        error = orjson.loads(result.body)["error"]
        first = (error.get("errors") or [{}])[0]
        return first.get("reason") or error.get("status", ""), error.get("message", "")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return "", result.body.decode("utf-8", "replace")[:300]


def table_problem(table: str, found: Mapping[str, tuple[str, str]]) -> str | None:
    """What makes the table unfit for the rows, naming the column; None when it fits."""
    for column in columns(BIGQUERY):
        name = column_name(BIGQUERY, column)
        actual = found.get(name)
        if actual is None:
            return f"table {table} has no column {name}"
        kind, mode = actual
        if kind.upper() not in _COMPATIBLE[column.kind] or (
            (column.kind is Kind.TAGS) != (mode == "REPEATED")
        ):
            return f"column {name} of {table} is {mode} {kind}, which does not fit {column.kind}"
    return None
