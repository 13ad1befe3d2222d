"""The MMDS data store: one JSON value, a size limit, PUT/PATCH semantics (catalog 7.1, 7.4).

* ``put(value)`` replaces the whole store; ``patch(value)`` applies an RFC 7396 JSON merge patch
  (``null`` deletes a key, a non-object patch replaces the target) and needs an earlier PUT.
* The size of the store is the length of its compact JSON serialisation; a PUT or PATCH whose
  result would be larger than the limit (``--mmds-size-limit``, default the API payload limit
  51200) is refused and changes nothing.
* Object keys are kept sorted, as Firecracker's serde_json maps are: GET /mmds, the guest's JSON
  answers and the IMDS key listings all come out in key order.
* ``get_value(pointer, fmt)`` resolves a JSON pointer (RFC 6901, ``~0``/``~1`` escapes; one trailing
  ``/`` ignored) and renders the value as JSON or in IMDS text form: an object's keys one per line
  (objects get a trailing ``/``), a string as itself; anything else cannot be shown as text.

Values are the plain Python types ``msgspec.json.decode`` produces (dict, list, str, int, float,
bool, None); the store never mutates a value it was given, so callers may keep theirs.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec

from sparkler.errors import SparklerError

DEFAULT_SIZE_LIMIT = 51200

LIMIT_EXCEEDED = "The MMDS patch request doesn't fit."
NOT_FOUND = "The MMDS resource does not exist."
NOT_INITIALIZED = "The MMDS data store is not initialized."
UNSUPPORTED_VALUE_TYPE = "Cannot retrieve value. The value has an unsupported type."


class MmdsStoreError(SparklerError):
    """A store operation failed; the store is unchanged."""


class LimitExceeded(MmdsStoreError):
    def __init__(self) -> None:
        super().__init__(LIMIT_EXCEEDED)


class NotInitialized(MmdsStoreError):
    def __init__(self) -> None:
        super().__init__(NOT_INITIALIZED)


class NotFound(MmdsStoreError):
    def __init__(self) -> None:
        super().__init__(NOT_FOUND)


class UnsupportedValueType(MmdsStoreError):
    def __init__(self) -> None:
        super().__init__(UNSUPPORTED_VALUE_TYPE)


class OutputFormat(enum.Enum):
    JSON = "json"
    IMDS = "imds"


def encode(value: Any) -> bytes:
    """Compact JSON with sorted keys (serde_json's output for a BTreeMap-backed Value)."""
    return msgspec.json.encode(value, order="sorted")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: a new value; neither argument is modified.

    Iterative (an explicit stack of objects still to merge), so a deeply nested patch cannot
    exhaust the interpreter's recursion limit.
    """
    if not isinstance(patch, dict):
        return patch
    root: dict[str, Any] = dict(target) if isinstance(target, dict) else {}
    stack: list[tuple[dict[str, Any], dict[str, Any]]] = [(root, patch)]
    while stack:
        result, current = stack.pop()
        for key, value in current.items():
            if value is None:
                result.pop(key, None)
            elif isinstance(value, dict):
                existing = result.get(key)
                child: dict[str, Any] = dict(existing) if isinstance(existing, dict) else {}
                result[key] = child
                stack.append((child, value))
            else:
                result[key] = value
    return root


def split_pointer(pointer: str) -> list[str] | None:
    """JSON pointer tokens; None when the pointer does not start with ``/`` (and is not empty)."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        return None
    return [token.replace("~1", "/").replace("~0", "~") for token in pointer[1:].split("/")]


def resolve(value: Any, pointer: str) -> Any:
    """The value at ``pointer`` (serde_json's ``Value::pointer``); raises NotFound."""
    tokens = split_pointer(pointer)
    if tokens is None:
        raise NotFound()
    for token in tokens:
        if isinstance(value, dict):
            if token not in value:
                raise NotFound()
            value = value[token]
        elif isinstance(value, list):
            # Array indices: decimal digits without a leading zero (except "0" itself).
            if not token.isdigit() or not token.isascii() or (len(token) > 1 and token[0] == "0"):
                raise NotFound()
            index = int(token)
            if index >= len(value):
                raise NotFound()
            value = value[index]
        else:
            raise NotFound()
    return value


def format_imds(value: Any) -> str:
    """IMDS text: an object's keys (sorted, ``/`` after object values) one per line, or a string."""
    if isinstance(value, dict):
        return "\n".join(key + "/" if isinstance(value[key], dict) else key for key in sorted(value))
    if isinstance(value, str):
        return value
    raise UnsupportedValueType()


class MmdsStore:
    """The JSON tree behind /mmds and the guest's metadata requests."""

    def __init__(self, size_limit: int = DEFAULT_SIZE_LIMIT) -> None:
        self.size_limit = size_limit
        self.initialized = False
        self._data: Any = None
        self._size = len(encode(None))

    @property
    def size(self) -> int:
        """Length of the stored value's compact JSON."""
        return self._size

    def value(self) -> Any:
        """The stored value (``{}`` before the first PUT, as GET /mmds answers). Do not modify."""
        return self._data if self.initialized else {}

    def put(self, value: Any) -> None:
        size = len(encode(value))
        if size > self.size_limit:
            raise LimitExceeded()
        self._data, self._size, self.initialized = value, size, True

    def patch(self, patch: Any) -> None:
        if not self.initialized:
            raise NotInitialized()
        merged = merge_patch(self._data, patch)
        size = len(encode(merged))
        if size > self.size_limit:
            raise LimitExceeded()
        self._data, self._size = merged, size

    def get_value(self, pointer: str, fmt: OutputFormat) -> str:
        """The value at ``pointer`` rendered as JSON or IMDS text; NotFound / UnsupportedValueType."""
        if pointer.endswith("/"):
            pointer = pointer[:-1]
        value = resolve(self._data, pointer)
        if fmt is OutputFormat.JSON:
            return encode(value).decode()
        return format_imds(value)


__all__ = [
    "DEFAULT_SIZE_LIMIT",
    "LimitExceeded",
    "MmdsStore",
    "MmdsStoreError",
    "NotFound",
    "NotInitialized",
    "OutputFormat",
    "UnsupportedValueType",
    "encode",
    "format_imds",
    "merge_patch",
    "resolve",
]
