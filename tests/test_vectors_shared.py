"""The payload and error vectors shared with the TypeScript client (tests/vectors/payloads.txt,
errors.txt; js/test/vectors.test.mjs runs the same files): the Python codecs encode every
value to exactly the listed bytes and decode the bytes back to the value."""

from __future__ import annotations

import json
import pathlib

import pytest
from test_frames import unhex

from fastrpc.calls import decode_error, encode_error
from fastrpc.codec import get_codec

VECTORS = pathlib.Path(__file__).parent / "vectors"


def _rows(filename: str, columns: int) -> list[list[str]]:
    out = []
    for number, raw in enumerate((VECTORS / filename).read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split(" | ")]
        assert len(fields) == columns, f"{filename}:{number}: {columns} fields expected"
        out.append(fields)
    return out


PAYLOADS = _rows("payloads.txt", 4)
ERRORS = _rows("errors.txt", 6)


@pytest.mark.parametrize(("name", "codec", "value", "data"), PAYLOADS, ids=[r[0] for r in PAYLOADS])
def test_payload_vector(name: str, codec: str, value: str, data: str) -> None:
    c = get_codec(codec)
    expected = json.loads(value)
    assert c.encode_value(expected) == unhex(data)
    decoded = c.decode_value(unhex(data))
    assert decoded == expected and type(decoded) is type(expected)


@pytest.mark.parametrize(("name", "payload", "code", "type_name", "message", "tb"), ERRORS, ids=[r[0] for r in ERRORS])
def test_error_vector(name: str, payload: str, code: str, type_name: str, message: str, tb: str) -> None:
    data = unhex(payload)
    err = decode_error(data)
    assert err.type_name == json.loads(type_name)
    assert err.message == json.loads(message)
    assert err.code == (None if code == "-" else int(code))
    assert err.remote_traceback == (None if tb == "-" else json.loads(tb))
    args = (json.loads(type_name), json.loads(message), None if code == "-" else int(code))
    assert encode_error(*args, None if tb == "-" else json.loads(tb)) == data


def test_vector_files_cover_the_formats() -> None:
    names = " ".join(r[0] for r in PAYLOADS)
    for kind in ("fixint", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float64"):
        assert kind in names
    for kind in ("fixstr", "str8", "str16", "fixarray", "array16", "fixmap", "map16"):
        assert kind in names
    assert {r[1] for r in PAYLOADS} == {"msgpack", "json"}
    assert any(r[5] != "-" for r in ERRORS) and any(r[2] != "-" for r in ERRORS)
