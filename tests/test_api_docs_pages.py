"""`/docs` and `/redoc` work on a network without CDNs: every script, style sheet and icon
the pages name is a path on the API itself, and the API serves it; the OpenAPI document
loads from the URL the pages use. A real `broadcast serve`; no management key is sent."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest
import requests

from harness.api_server import ApiServer

CONTENT_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


@pytest.fixture(scope="module")
def api(redis_server, workdir) -> Iterator[ApiServer]:
    server = ApiServer(os.environ, workdir)
    yield server
    server.stop()


class Links(HTMLParser):
    """Every `src` and `href` of a page, and the attributes of its `redoc` element."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.redoc: dict[str, str | None] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value or "" for name, value in attrs if name in ("src", "href")]
        if tag == "redoc":
            self.redoc = dict(attrs)


def page(api: ApiServer, path: str) -> tuple[str, Links]:
    response = requests.get(api.url + path, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    links = Links()
    links.feed(response.text)
    return response.text, links


def assert_served_locally(api: ApiServer, urls: list[str]) -> None:
    assert urls
    for url in urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc and not url.startswith("//"), url
        asset = requests.get(urljoin(api.url + "/docs", url), timeout=30)
        assert asset.status_code == 200, url
        assert asset.content, url
        suffix = re.search(r"\.[a-z]+$", parts.path)
        assert suffix, url
        assert CONTENT_TYPES[suffix.group()] in asset.headers["content-type"], (url, asset.headers)


def assert_openapi_document(api: ApiServer, url: str) -> None:
    assert not urlsplit(url).netloc, url
    document = requests.get(urljoin(api.url + "/docs", url), timeout=10).json()
    assert document["openapi"].startswith("3.") and "/api/v1/observability/status" in (
        document["paths"])  # fmt: skip


def test_swagger_ui_loads_everything_from_the_api(api):
    html, links = page(api, "/docs")
    assert_served_locally(api, links.urls)
    assert {urlsplit(url).path.rsplit(".", 1)[1] for url in links.urls} == {"css", "png", "js"}
    [document_url] = re.findall(r"url: '([^']+)'", html)
    assert_openapi_document(api, document_url)
    # Swagger UI would otherwise send the document to swagger.io's online validator.
    assert '"validatorUrl": null' in html


def test_redoc_loads_everything_from_the_api_without_web_fonts(api):
    html, links = page(api, "/redoc")
    assert_served_locally(api, links.urls)
    assert "fonts.googleapis.com" not in html
    assert_openapi_document(api, links.redoc["spec-url"] or "")


def test_the_oauth2_redirect_page_is_still_served(api):
    response = requests.get(api.url + "/docs/oauth2-redirect", timeout=10)
    assert response.status_code == 200 and "oauth2" in response.text.lower()


def test_the_pages_and_their_assets_are_not_in_the_openapi_document(api):
    paths = requests.get(api.url + "/openapi.json", timeout=10).json()["paths"]
    assert not [path for path in paths if path.startswith(("/docs", "/redoc"))]
