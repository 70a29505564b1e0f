"""The management HTTP API (`broadcast serve`): a dashboard's view of `SettingsService`.

Resources mirror OpenRouter's observability destinations API under
`/api/v1/observability/`, one router each: `destinations` (create, list, get, update,
delete, test, resume), `inspection` (status, deliveries, dead letters and replay, health
events, rejected events), `destination_types` and `owner` (the on/off switch). Bodies are
`bodies`, answers `answers`, errors `errors` (declared on every route, so `/openapi.json`
states the real status codes and error body); `access` knows the caller, `docs_pages`
serves `/docs` and `/redoc` without a CDN, `app` puts them together behind
broadcast_interfaces/api_guard.py.
"""

from broadcast_interfaces.http_api.app import create_app, serve

__all__ = ["create_app", "serve"]
