"""Every public name has a docstring: the names the API reference documents
(docs/api.rst): ``fastrpc.__all__`` and the ``__all__`` of the public modules, and
the public methods and properties of their classes (inherited ones from fastrpc's
own base classes too)."""

from __future__ import annotations

import enum
import importlib
import inspect
from collections.abc import Iterator
from typing import Any

import fastrpc

MODULES = [
    "fastrpc",
    "fastrpc.asgi",
    "fastrpc.broker",
    "fastrpc.cli",
    "fastrpc.exceptions",
    "fastrpc.introspection",
    "fastrpc.jsonmode",
    "fastrpc.options",
    "fastrpc.redis_broker",
    "fastrpc.sessions",
    "fastrpc.static",
    "fastrpc.topics",
    "fastrpc.workers",
]


def _own(obj: Any) -> bool:
    module = getattr(obj, "__module__", None) or ""
    return module == "fastrpc" or module.startswith("fastrpc.")


def _members(cls: type) -> Iterator[tuple[str, Any]]:
    seen: set[str] = set()
    for klass in cls.__mro__:
        if not _own(klass):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_") or name in seen:
                continue
            seen.add(name)
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if inspect.isfunction(value) or isinstance(value, property):
                yield name, value


def _public() -> Iterator[tuple[str, Any]]:
    for modname in MODULES:
        module = importlib.import_module(modname)
        yield modname, module
        for name in module.__all__:
            obj = getattr(module, name)
            if name.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)) or not _own(obj):
                continue  # constants are documented where they are defined
            yield f"{modname}.{name}", obj
            if inspect.isclass(obj) and not issubclass(obj, enum.Enum):
                for member, value in _members(obj):
                    yield f"{modname}.{name}.{member}", value


def test_every_public_name_has_a_docstring() -> None:
    missing = sorted({name for name, obj in _public() if not (inspect.getdoc(obj) or "").strip()})
    assert not missing, "public names without a docstring:\n  " + "\n  ".join(missing)


def test_the_api_reference_covers_the_public_modules() -> None:
    text = (__import__("pathlib").Path(__file__).resolve().parent.parent / "docs" / "api.rst").read_text()
    for modname in MODULES[1:]:
        if modname in ("fastrpc.cli",):
            continue
        assert f"automodule:: {modname}" in text, modname
    for name in fastrpc.__all__:
        assert f"fastrpc.{name}" in text or name in ("ErrorCode",) or name in _exception_names(), name


def _exception_names() -> set[str]:
    import fastrpc.exceptions

    return set(fastrpc.exceptions.__all__)
