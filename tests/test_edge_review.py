"""Regressions from a review of the edges a user or a peer touches first: options
that cannot go into a HELLO are refused where they are given (serve, connect),
naming the option, instead of failing every connection."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from _util import QUIET, run

import fastrpc
from fastrpc.wire import VARINT_MAX

router = fastrpc.Router()


@router.method
def add(a: int, b: int) -> int:
    return a + b


BAD_OPTIONS = [
    ({"max_pending_calls": -1}, "max_pending_calls"),
    ({"max_streams": -1}, "max_streams"),
    ({"max_frame_size": VARINT_MAX + 1, "max_message_size": VARINT_MAX + 1}, "max_frame_size"),
    ({"max_item_size": 0}, "max_item_size"),
    ({"connection_window": -5}, "connection_window"),
    ({"max_frame_size": 8 << 20}, "max_message_size"),  # above the default max_message_size
]


@pytest.mark.parametrize(("options", "name"), BAD_OPTIONS)
def test_bad_limits_are_refused_by_serve_and_connect_naming_the_option(
    options: dict[str, Any], name: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: serve() accepted them; each connection then failed in the server
    # ("Task exception was never retrieved": varint out of range, or the Settings
    # check) and the client waited handshake_timeout (10 s) for a HELLO.
    async def main() -> None:
        with pytest.raises(ValueError, match=name):
            fastrpc.serve(router, "127.0.0.1", 0, **QUIET, **options)
        async with fastrpc.serve(router, "127.0.0.1", 0, **QUIET) as server:
            with pytest.raises(ValueError, match=name):
                fastrpc.connect(server.url, **QUIET, **options)
            # Good values still go through, and the server serves on.
            async with fastrpc.connect(server.url, **QUIET, handshake_timeout=5) as peer:
                assert await asyncio.wait_for(peer.call("add", 1, 2), 5) == 3

    with caplog.at_level(logging.ERROR):
        run(main(), timeout=20)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_a_token_in_the_query_string_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    # docs/security.md: browsers send their token as ?token=...; the INFO line of an
    # opened connection named its path with the query string, token included.
    secret = "s3cret-token-value"

    def authenticate(request: fastrpc.HandshakeRequest) -> str:
        if request.query.get("token") != [secret]:
            raise fastrpc.Unauthorized("unknown token")
        return "user"

    async def main() -> None:
        async with fastrpc.serve(router, "127.0.0.1", 0, authenticate=authenticate, **QUIET) as server:
            async with fastrpc.connect(f"{server.url}/rpc?token={secret}&x=1", **QUIET) as peer:
                assert await asyncio.wait_for(peer.call("add", 1, 2), 5) == 3
                assert (await asyncio.wait_for(peer.call("add", 2, 2), 5)) == 4
            with pytest.raises(fastrpc.Unauthorized):
                async with fastrpc.connect(f"{server.url}/rpc?token=wrong-{secret}", **QUIET):
                    pass

    with caplog.at_level(logging.DEBUG, logger="fastrpc"):
        run(main(), timeout=20)
    assert "opened (/rpc" in caplog.text, caplog.text  # the path is still logged
    assert secret not in caplog.text, caplog.text
