"""Hypothesis strategies drawn from the edge's one schema (service/edge/schema.py),
and mutations of what they draw.

``valid(kind)`` draws objects the schema accepts, field by field from msgspec's
own description of ``kind`` (types, bounds, patterns, required fields).
``mutated(kind)`` draws one of them broken in one way a careless or hostile
caller breaks things: a required field dropped, an unknown one added, a value
of the wrong type, JSON nested too deep, an integer beyond 64 bits, a number
too large to be finite.
"""

from __future__ import annotations

from typing import Any

import msgspec
import msgspec.inspect as mi
from hypothesis import strategies as st

from service.edge.schema import MAX_DEPTH

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def _value(kind: mi.Type) -> st.SearchStrategy[Any]:
    if isinstance(kind, mi.Metadata):
        return _value(kind.type)
    if isinstance(kind, mi.UnionType):
        return st.one_of([_value(k) for k in kind.types])
    if isinstance(kind, mi.NoneType):
        return st.none()
    if isinstance(kind, mi.StrType):
        if kind.pattern:
            return st.from_regex(kind.pattern, fullmatch=True).filter(lambda s: "\n" not in s)
        return st.text(max_size=40)
    if isinstance(kind, mi.IntType):
        low = kind.ge if kind.ge is not None else -(2**63)
        high = kind.le if kind.le is not None else 2**63 - 1
        return st.integers(low, high)
    if isinstance(kind, mi.FloatType):
        return st.floats(allow_nan=False, allow_infinity=False)
    if isinstance(kind, mi.LiteralType):
        return st.sampled_from(kind.values)
    if isinstance(kind, mi.DictType):
        return st.dictionaries(st.text(max_size=8), JSON, max_size=4)
    if isinstance(kind, mi.AnyType):
        return JSON
    raise NotImplementedError(f"no strategy for {kind!r}")


def _fields(kind: type[msgspec.Struct]) -> tuple[mi.Field, ...]:
    info = mi.type_info(kind)
    assert isinstance(info, mi.StructType)
    return info.fields


def valid(kind: type[msgspec.Struct]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects ``kind`` accepts: every required field, some optional ones."""
    fields = _fields(kind)
    required = {f.encode_name: _value(f.type) for f in fields if f.required}
    optional = {f.encode_name: _value(f.type) for f in fields if not f.required}
    return st.fixed_dictionaries(required, optional=optional)


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@st.composite
def mutated(draw: st.DrawFn, kind: type[msgspec.Struct]) -> dict[str, Any]:
    """A valid object of ``kind`` broken in one way."""
    body = dict(draw(valid(kind)))
    fields = _fields(kind)
    required = [f.encode_name for f in fields if f.required]
    names = [f.encode_name for f in fields]
    how = draw(
        st.sampled_from(
            ["drop", "unknown", "wrong_type", "too_deep", "too_big", "not_finite"]
            if required
            else ["unknown", "wrong_type", "too_deep", "too_big", "not_finite"]
        )
    )
    if how == "drop":
        del body[draw(st.sampled_from(required))]
    elif how == "unknown":
        body[draw(st.text(min_size=1, max_size=10).filter(lambda n: n not in names))] = 1
    else:
        name = draw(st.sampled_from(names))
        body[name] = {
            "wrong_type": draw(st.sampled_from([[1, 2], {"x": [1]}, True])),
            "too_deep": {"deep": nested(MAX_DEPTH + 5)},
            "too_big": draw(st.sampled_from([2**63, -(2**63) - 1, 2**80])),
            "not_finite": msgspec.Raw(b"1e999"),
        }[how]
    return body


def encode(body: dict[str, Any]) -> bytes:
    """JSON bytes of ``body``; integers beyond 64 bits and raw number text
    as they stand (orjson would refuse to write them)."""
    return msgspec.json.encode(body)


# Bytes that are not a JSON object at all.
JUNK = st.sampled_from(
    [
        b"",
        b"{",
        b"[]",
        b'"text"',
        b"null",
        b"\xff\xfe\x00",
        b'{"a": 1, "a": 2}',
        b"{" * 5000,
        b"[" * 2000 + b"]" * 2000,
        b'{"content": "\\ud800"}',
    ]
)
