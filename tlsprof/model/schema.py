"""Validation of the report contract, schema `tlsprof.report/2` (and `/1`).

The contract lives in `tlsprof/model/schema/report.schema.json` (JSON Schema 2020-12). The CLI must not
need `jsonschema`, so this module interprets the small subset of keywords that file uses ($ref to
$defs, type, enum, const, required, properties, additionalProperties, propertyNames, items,
minimum, minLength, pattern). Tests check that `jsonschema` agrees with it.
After the structure, `validate_report` checks what JSON Schema cannot say (dates, sums, sizes).
Every failure is one `BadReport` line naming the first offending key.
"""

import functools
import json
import math
import os
import re
from datetime import datetime

from tlsprof.errors import BadReport

SCHEMA_ID = "tlsprof.report/2"
# /1 reports (before the connection, context, thread_state and library causes) are still read
SCHEMA_READABLE = ("tlsprof.report/2", "tlsprof.report/1")
SCHEMA_PREFIX = "tlsprof.report/"
SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema", "report.schema.json")

# Byte and block counts are 64-bit in the shim; anything larger is corruption, and would overflow
# float arithmetic in the renderers.
MAX_NUMBER = 2**63
_IGNORED = {"$schema", "$id", "$defs", "$comment", "title", "description", "format", "examples"}


@functools.lru_cache(maxsize=1)
def load_schema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as fh:
        return json.load(fh)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _is_type(value, name: str) -> bool:
    if name == "null":
        return value is None
    if name == "boolean":
        return isinstance(value, bool)
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "string":
        return isinstance(value, str)
    if isinstance(value, bool):
        return False
    if name == "number":
        return isinstance(value, (int, float))
    if name == "integer":  # as in JSON Schema: 3.0 is an integer
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    raise ValueError(f"unsupported schema type {name!r}")


def _where(path: str) -> str:
    return path or "the document"


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_$-]{1,40}$")


def _join(path: str, key) -> str:
    """Extend a dotted path; odd keys (control characters, long, empty) are quoted, ASCII only."""
    key = str(key)
    if not _PLAIN_KEY.match(key):
        return f"{path}[{_short(key).encode('ascii', 'backslashreplace').decode()}]"
    return f"{path}.{key}" if path else key


class _Checker:
    def __init__(self, root: dict):
        self.root = root

    def resolve(self, ref: str) -> dict:
        if not ref.startswith("#/"):
            raise ValueError(f"unsupported $ref {ref!r}")
        node = self.root
        for part in ref[2:].split("/"):
            node = node[part]
        return node

    def check(self, value, schema: dict, path: str) -> None:
        for key in schema:
            if key not in _IGNORED and key not in _HANDLED:
                raise ValueError(f"schema keyword {key!r} is not supported by tlsprof.schema")
        if "$ref" in schema:
            self.check(value, self.resolve(schema["$ref"]), path)
        if "type" in schema:
            types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            if not any(_is_type(value, t) for t in types):
                wanted = " or ".join(types)
                raise BadReport(f"{_where(path)}: expected {wanted}, got {_kind(value)} {_short(value)}")
        if "const" in schema and not _equal(value, schema["const"]):
            raise BadReport(f"{_where(path)}: must be {schema['const']!r}, got {_short(value)}")
        if "enum" in schema and not any(_equal(value, e) for e in schema["enum"]):
            allowed = ", ".join(repr(e) for e in schema["enum"])
            raise BadReport(f"{_where(path)}: {_short(value)} is not one of {allowed}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if "minimum" in schema and value < schema["minimum"]:
                raise BadReport(f"{_where(path)}: must be >= {schema['minimum']}, got {_short(value)}")
        if isinstance(value, str):
            if "minLength" in schema and len(value) < schema["minLength"]:
                raise BadReport(f"{_where(path)}: string too short: {_short(value)}")
            if "pattern" in schema and not re.search(schema["pattern"], value):
                raise BadReport(f"{_where(path)}: {_short(value)} does not match {schema['pattern']}")
        if isinstance(value, dict):
            self.check_object(value, schema, path)
        if isinstance(value, list) and "items" in schema:
            for i, item in enumerate(value):
                self.check(item, schema["items"], f"{path}[{i}]")

    def check_object(self, value: dict, schema: dict, path: str) -> None:
        for key in schema.get("required", ()):
            if key not in value:
                raise BadReport(f"{_where(path)}: missing key {key!r}")
        props = schema.get("properties", {})
        for key, sub in props.items():
            if key in value:
                self.check(value[key], sub, _join(path, key))
        names = schema.get("propertyNames")
        extra = schema.get("additionalProperties", True)
        for key in value:
            if names is not None:
                try:
                    self.check(key, names, _join(path, key))
                except BadReport:
                    raise BadReport(f"{_where(path)}: unknown key {_short(key)}") from None
            if key in props:
                continue
            if extra is False:
                raise BadReport(f"{_where(path)}: unexpected key {_short(key)}")
            if isinstance(extra, dict):
                self.check(value[key], extra, _join(path, key))


_HANDLED = {
    "$ref",
    "type",
    "const",
    "enum",
    "minimum",
    "minLength",
    "pattern",
    "items",
    "required",
    "properties",
    "propertyNames",
    "additionalProperties",
}


def _equal(a, b) -> bool:
    # JSON equality: True is not 1.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return type(a) is type(b) and a == b or (isinstance(a, (int, float)) and isinstance(b, (int, float)) and a == b)


def check_structure(doc) -> None:
    """The JSON Schema part only: raises BadReport when `doc` does not match the .json schema."""
    _Checker(load_schema()).check(doc, load_schema(), "")


def _check_schema_id(doc) -> None:
    if not isinstance(doc, dict):
        raise BadReport(f"not a tlsprof report: the top level is {_kind(doc)}, not an object")
    if "schema" not in doc:
        raise BadReport("not a tlsprof report: no 'schema' key")
    schema = doc["schema"]
    if schema in SCHEMA_READABLE:
        return
    if isinstance(schema, str) and schema.startswith(SCHEMA_PREFIX):
        raise BadReport(f"report schema {_short(schema)} is not supported; this tlsprof reads {SCHEMA_ID}")
    raise BadReport(f"not a tlsprof report: schema is {_short(schema)}, expected {SCHEMA_ID!r}")


def _check_numbers(doc) -> None:
    stack = [(doc, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            stack.extend((v, _join(path, k)) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            raise BadReport(f"{_where(path)}: not a finite number")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) > MAX_NUMBER:
            raise BadReport(f"{_where(path)}: number out of range")


def _check_semantics(doc: dict) -> None:
    try:
        datetime.fromisoformat(doc["captured_at"])
    except ValueError:
        raise BadReport(f"captured_at: not an ISO 8601 time: {_short(doc['captured_at'])}") from None
    per = doc["per_connection"]
    parts = per["own_bytes"] + per["context_share_bytes"]
    if abs(per["bytes"] - parts) > 1 + 1e-6 * parts:
        raise BadReport(f"per_connection.bytes ({per['bytes']}) is not own_bytes + context_share_bytes ({parts})")


def validate_report(doc) -> None:
    """Raise BadReport (one line) unless `doc` is a valid `tlsprof.report/2` (or `/1`) document."""
    _check_schema_id(doc)
    _check_numbers(doc)
    check_structure(doc)
    _check_semantics(doc)
