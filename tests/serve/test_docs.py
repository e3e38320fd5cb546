"""The OpenAPI docs page loads its scripts from the app itself (no CDN)."""

from __future__ import annotations

import re
from collections.abc import Callable

from fastapi.testclient import TestClient

MakeClient = Callable[..., TestClient]


def test_docs_assets_are_served_locally(make_client: MakeClient) -> None:
    client = make_client(headers=None)
    page = client.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r"""(?:src|href)=['"]([^'"]+\.(?:js|css))['"]""", page.text)
    assert assets, page.text[:500]
    for url in assets:
        assert url.startswith("/"), f"{url} is not served by the app"
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 10_000, url
    assert client.get("/openapi.json").json()["info"]["title"] == "sieve"
