"""Authentication at the WebSocket handshake: the request a server's
``authenticate`` hook sees, and how its answer turns into an HTTP response.

::

    def authenticate(request: fastrpc.HandshakeRequest) -> object:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        user = USERS.get(token)
        if user is None:
            raise fastrpc.Unauthorized("unknown token")     # HTTP 401, before the upgrade
        if request.path != "/rpc":
            raise fastrpc.Forbidden("no such endpoint")     # HTTP 403
        return user                                         # peer.identity in handlers

    fastrpc.serve(router, authenticate=authenticate, ssl=context)

The hook may be a coroutine function. It runs before the WebSocket upgrade, for
every connection (a session being resumed included); returning None (or False)
refuses with 401. Handlers read ``current_peer().identity`` and
``current_peer().request_headers``.
"""

from __future__ import annotations

import http
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Union
from urllib.parse import parse_qs

from .exceptions import AuthError, Unauthorized

__all__ = ["Authenticate", "HandshakeRequest", "RequestHeaders", "run_authenticate"]


@dataclass(frozen=True)
class HandshakeRequest:
    """The HTTP request that asks to open a connection.

    ``path`` without the query string; ``query`` its parameters (each a list, as
    :func:`urllib.parse.parse_qs` gives them); ``headers`` a case-insensitive
    mapping (``request.headers["Authorization"]``); ``remote_address`` the
    client's ``(host, port)``.
    """

    path: str
    query: dict[str, list[str]] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    remote_address: Any = None

    @classmethod
    def from_target(cls, target: str, headers: Mapping[str, str], remote_address: Any) -> HandshakeRequest:
        """From the request target (path and query) and headers."""
        # (Not urlsplit: it reads a target that starts with "//" as a host and a path,
        # so the hook would check another path than the connection's.)
        path, _, query = target.partition("?")
        return cls(path or "/", parse_qs(query), headers, remote_address)


class RequestHeaders(Mapping[str, str]):
    """The headers of an opening request: looked up whatever the case of the name,
    a repeated header's values joined by a comma and a space (RFC 9110 5.3);
    :meth:`get_all` gives them one by one."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        joined: dict[str, list[str]] = {}
        for name, value in items:
            joined.setdefault(name.lower(), []).append(value)
        self._items = joined

    def __getitem__(self, name: str) -> str:
        return ", ".join(self._items[name.lower()])

    def get_all(self, name: str) -> list[str]:
        """Every value of header ``name``, in order (an empty list when it is absent)."""
        return list(self._items.get(name.lower(), ()))

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"RequestHeaders({ {k: self[k] for k in self._items}!r})"


Authenticate = Callable[[HandshakeRequest], Union[Any, Awaitable[Any]]]


async def run_authenticate(hook: Authenticate, request: HandshakeRequest) -> Any:
    """The identity ``hook`` accepts ``request`` with; :class:`AuthError` (with its
    HTTP status) when it refuses."""
    result = hook(request)
    if inspect.isawaitable(result):
        result = await result
    if result is None or result is False:
        raise Unauthorized("authentication required")
    return result


def refusal(exc: AuthError) -> tuple[int, str]:
    """The HTTP status and body of a refusal. A status that is not an HTTP error
    status (400 to 599, one :class:`http.HTTPStatus` knows) is answered 500, and
    logged: the hook's mistake, not the client's."""
    status = exc.status
    if status not in _ERROR_STATUSES:
        logger.error(
            "authenticate raised %r with status %r, not an HTTP error status (400-599): answered 500", exc, status
        )
        return 500, "authentication failed\n"
    return status, (exc.reason or "refused") + "\n"


_ERROR_STATUSES = frozenset(int(s) for s in http.HTTPStatus if 400 <= s < 600)
logger = logging.getLogger("fastrpc.server")
