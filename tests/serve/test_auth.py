"""API keys: 401 without a (valid) key, 403 without the scope, open modes, no key in logs."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from sieve.serve.auth import KeyRing, hash_key
from sieve.settings import ApiKey

MakeClient = Callable[..., TestClient]
ITEM = {"id": "a"}


def test_no_key_is_401_saying_how_to_authenticate(make_client: MakeClient) -> None:
    client = make_client(headers=None)
    for response in (client.get("/items"), client.post("/items", json=ITEM)):
        assert response.status_code == 401
        assert "Authorization: Bearer" in response.json()["detail"]
        assert "X-API-Key" in response.json()["detail"]
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_invalid_key_is_401(make_client: MakeClient) -> None:
    client = make_client(headers={"Authorization": "Bearer not-a-key"})
    response = client.get("/items")
    assert response.status_code == 401
    assert "invalid API key" in response.json()["detail"]
    assert "not-a-key" not in response.text


def test_read_key_on_a_write_is_403_naming_the_scope(
    make_client: MakeClient, headers: dict[str, dict[str, str]]
) -> None:
    client = make_client(headers=headers["read"])
    assert client.get("/items").status_code == 200
    response = client.post("/items", json=ITEM)
    assert response.status_code == 403
    assert "'write'" in response.json()["detail"]
    assert client.post("/admin/reload").status_code == 403
    assert "'admin'" in client.post("/admin/reload").json()["detail"]


def test_write_key_cannot_read_and_admin_can_do_all(
    make_client: MakeClient, headers: dict[str, dict[str, str]]
) -> None:
    writer = make_client(headers=headers["write"])
    assert writer.post("/items", json=ITEM).status_code == 201
    forbidden = writer.get("/items/a")
    assert forbidden.status_code == 403 and "'read'" in forbidden.json()["detail"]
    admin = make_client(headers=headers["admin"])
    assert admin.get("/items/a").status_code == 200
    assert admin.put("/items/a", json=ITEM).status_code == 200
    assert admin.delete("/items/a").status_code == 204


def test_x_api_key_header_works(make_client: MakeClient, keys: dict[str, str]) -> None:
    client = make_client(headers={"X-API-Key": keys["read"]})
    assert client.get("/items").status_code == 200
    assert client.post("/items", json=ITEM).status_code == 403


def test_open_read_lets_reads_through_but_not_writes(make_client: MakeClient) -> None:
    client = make_client(headers=None, open_read=True)
    assert client.get("/items").status_code == 200
    assert client.post("/items", json=ITEM).status_code == 401
    # a key that is sent is still checked
    assert client.get("/items", headers={"X-API-Key": "wrong"}).status_code == 401


def test_open_write_only_from_loopback(make_client: MakeClient) -> None:
    local = make_client(headers=None, open_write=True, client=("127.0.0.1", 5000))
    assert local.post("/items", json=ITEM).status_code == 201
    assert local.get("/items/a").status_code == 200
    assert local.post("/admin/reload").status_code == 401  # admin still needs a key
    remote = make_client(headers=None, open_write=True, client=("203.0.113.9", 5000))
    assert remote.post("/items", json={"id": "b"}).status_code == 401


def test_probes_need_no_key(make_client: MakeClient) -> None:
    client = make_client(headers=None)
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/version").status_code == 200
    assert client.get("/ready").status_code == 503  # no model yet, but not 401


def test_the_raw_key_never_reaches_the_logs(
    make_client: MakeClient, keys: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_client(headers={"Authorization": f"Bearer {keys['admin']}"})
    client.post("/items", json=ITEM)
    client.get("/items/a", headers={"X-API-Key": keys["read"]})
    client.post("/items", json=ITEM, headers={"X-API-Key": keys["read"]})  # 403
    client.get("/items", headers={"Authorization": "Bearer sk_guess_123"})  # 401
    logged = caplog.text + " ".join(str(r.args) for r in caplog.records)
    assert "sieve.serve.access" in {r.name for r in caplog.records}
    assert "key=admin-key" in logged  # the key's name is logged ...
    for raw in (*keys.values(), "sk_guess_123"):
        assert raw not in logged  # ... the key never
        assert hash_key(raw) not in logged


def test_keyring_compares_digests() -> None:
    ring = KeyRing([ApiKey(name="k", key_hash=hash_key("secret"), scopes=("admin",))])
    principal = ring.identify("secret")
    assert principal is not None and principal.name == "k"
    assert principal.allows("read") and principal.allows("write")
    assert ring.identify("Secret") is None
    assert hash_key("secret") == "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
