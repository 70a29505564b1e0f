"""`/docs` (Swagger UI) and `/redoc` (ReDoc), with every asset served by the API itself.

FastAPI's own pages load their scripts, styles, favicon and (ReDoc) web fonts from CDNs,
so on a network without them `/docs` is a blank page. The files come from the
`fastapi-offline` package instead (Swagger UI and ReDoc as released, plus FastAPI's
favicon), under `/docs/static/`; the pages name them by path only, after the server's
`root_path` (a proxy's prefix). Swagger UI's online validator, which would send the
document to swagger.io, is switched off.

Outside the API's prefix: the pages and the OpenAPI document need no management key
(the routes' "Authorize" button takes one).
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations.
from importlib.resources import files

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS = "/docs"
REDOC = "/redoc"
STATIC = "/docs/static"
OAUTH2_REDIRECT = "/docs/oauth2-redirect"
# Swagger UI's parameters besides FastAPI's defaults: no badge fetched from swagger.io.
SWAGGER_UI_PARAMETERS = {"validatorUrl": None}


def install_docs_pages(app: FastAPI) -> None:
    """Serve the two pages and their assets on `app` (created with `docs_url=None` and
    `redoc_url=None`, so FastAPI's CDN pages are not there)."""
    assets = files("fastapi_offline") / "static"
    app.mount(STATIC, StaticFiles(directory=str(assets)), name="docs-static")
    app.include_router(_pages(app.title, app.openapi_url or "/openapi.json"))


def _pages(title: str, openapi_url: str) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get(DOCS)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{title} - Swagger UI",
            oauth2_redirect_url=root + OAUTH2_REDIRECT,
            swagger_js_url=f"{root}{STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC}/favicon.png",
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )

    @router.get(OAUTH2_REDIRECT)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @router.get(REDOC)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{root}{STATIC}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{STATIC}/favicon.png",
            with_google_fonts=False,
        )

    return router
