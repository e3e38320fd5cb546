"""API-key authentication with three scopes: `read`, `write`, `admin`.

- A client sends its key as `Authorization: Bearer <key>` or `X-API-Key: <key>`.
- Settings hold only the SHA-256 hex digest of each key (`hash_key`, or
  `sieve keys hash KEY`); a presented key is hashed and compared with every
  configured digest by `hmac.compare_digest` (constant time, no early exit),
  so neither the key nor timing reveals which digest matched.
- `admin` implies `read` and `write`. Reads (GET of the catalog and of
  recommendations) need `read`; catalog and event writes need `write`;
  reloading the model and precomputing need `admin`.
- No key → 401 telling how to send one; an `Authorization` header without
  the `Bearer ` prefix → 401 saying so; an unknown key → 401; a known key
  without the needed scope → 403 naming the scope and the keys that would do.
- `open_read` lets requests without a key through read endpoints;
  `open_write` lets them through write endpoints when the client is on the
  loopback interface (the quickstart). A key that *is* sent is always checked.

Keys never reach a log: the access log (see `sieve.serve.app`) writes the
method, path, status, duration and the matched key's *name* only.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from sieve.settings import ApiKey, Scope, Settings, is_loopback

_HOW = "send an API key as `Authorization: Bearer <key>` or `X-API-Key: <key>`"


def hash_key(key: str) -> str:
    """The SHA-256 hex digest of `key`: what settings store instead of the key."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh random key (256 bits, URL-safe)."""
    return "sk_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    """Who made a request: a configured key's name (or `anonymous`) and its scopes."""

    name: str
    scopes: frozenset[str]

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes or "admin" in self.scopes


ANONYMOUS_READER = Principal("anonymous", frozenset({"read"}))
LOCAL_WRITER = Principal("loopback", frozenset({"read", "write"}))


class KeyRing:
    """The configured keys, looked up by the digest of a presented key."""

    def __init__(self, keys: Sequence[ApiKey]) -> None:
        self._keys = [(k.key_hash.encode(), Principal(k.name, frozenset(k.scopes))) for k in keys]

    def __len__(self) -> int:
        return len(self._keys)

    def identify(self, key: str) -> Principal | None:
        """The principal of `key`, or None if no configured digest matches."""
        digest = hash_key(key).encode()
        found: Principal | None = None
        for known, principal in self._keys:  # every digest is compared: no early exit
            if hmac.compare_digest(digest, known):
                found = principal
        return found


# Both schemes appear in the OpenAPI document; either one authenticates.
bearer_scheme = HTTPBearer(
    auto_error=False, description="`Authorization: Bearer <key>`", scheme_name="bearer"
)
header_scheme = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="`X-API-Key: <key>`", scheme_name="apiKey"
)


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        detail=f"{message}: {_HOW}",
        headers={"WWW-Authenticate": "Bearer"},
    )


def _forbidden(principal: Principal, scope: Scope) -> str:
    """What a 403 says: the key, the scope it lacks and which keys would do."""
    wanted = "the 'admin' scope" if scope == "admin" else f"the {scope!r} or 'admin' scope"
    return (
        f"the API key {principal.name!r} lacks the {scope!r} scope this endpoint needs "
        f"(it has {sorted(principal.scopes)}): send a key with {wanted} "
        "(`sieve keys new --scopes " + scope + "` makes one)"
    )


def admit(
    settings: Settings,
    keyring: KeyRing,
    presented: str | None,
    authorization: str | None,
    client: str,
    scope: Scope,
    identified: Callable[[str], None] | None = None,
) -> Principal:
    """Who a request is, if it may use an endpoint needing `scope` (see the
    module doc); else the 401 or 403 `HTTPException` that says why.
    `presented`: the key sent (bearer credentials or `X-API-Key`);
    `authorization`: the raw `Authorization` header; `client`: its address;
    `identified`: told the name of a known key, before its scope is checked."""
    if not presented and authorization:
        # HTTPBearer ignores a header without the scheme: say so rather
        # than "missing", and never let it pass as an anonymous request
        raise _unauthorized(
            "the Authorization header does not start with 'Bearer ' "
            "(write `Authorization: Bearer <key>`)"
        )
    if not presented:
        if scope == "read" and settings.open_read:
            return ANONYMOUS_READER
        if scope in ("read", "write") and settings.open_write and is_loopback(client):
            return LOCAL_WRITER
        raise _unauthorized("missing API key")
    principal = keyring.identify(presented)
    if principal is None:
        raise _unauthorized("invalid API key")
    if identified is not None:
        identified(principal.name)
    if not principal.allows(scope):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=_forbidden(principal, scope))
    return principal


def require(scope: Scope) -> Callable[..., Awaitable[Principal]]:
    """A dependency that admits a request holding `scope` (see the module doc).

    Async although it awaits nothing: it never blocks, and FastAPI would
    otherwise run it in the thread pool, a hop that costs more than the check."""

    async def check(
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
        header: Annotated[str | None, Depends(header_scheme)],
    ) -> Principal:
        def identified(name: str) -> None:
            request.state.principal = name  # for the access log: the name, never the key

        return admit(
            request.app.state.settings,
            request.app.state.keyring,
            bearer.credentials if bearer is not None else header,
            request.headers.get("authorization"),
            request.client.host if request.client else "",
            scope,
            identified,
        )

    check.__name__ = f"require_{scope}"
    return check


#: Route parameters that admit a request holding the scope.
ReadAccess = Annotated[Principal, Depends(require("read"))]
WriteAccess = Annotated[Principal, Depends(require("write"))]
AdminAccess = Annotated[Principal, Depends(require("admin"))]

__all__ = [
    "AdminAccess",
    "KeyRing",
    "Principal",
    "ReadAccess",
    "WriteAccess",
    "admit",
    "hash_key",
    "new_key",
    "require",
]
