"""Every HTTP status code of the API, and the two error-body shapes.

Firecracker answers in two layers, with two body shapes:

* Request-level faults (bad path, bad JSON, wrong phase, failed action) are ``400`` with
  ``{"fault_message": "<text>"}``. They come from the router (``ApiFault``) or the controller
  (``VmmActionError``). 413 is reserved for the MMDS store size limit.
* HTTP-level parse errors (unsupported method, oversize body, malformed request) are ``400`` with
  ``{"error": "<reason>\\nAll previous unanswered requests will be dropped."}`` (micro-http's
  shape). Firecracker's body puts a raw newline inside the JSON string; ours is escaped so the
  body is valid JSON that decodes to the same text.
* The 11th concurrent connection gets a canned ``503`` and is closed.
"""

from __future__ import annotations

import json

import msgspec

from sparkler.vmm.actions import MmdsLimitExceededError, VmmActionError

OK = 200
NO_CONTENT = 204
BAD_REQUEST = 400
PAYLOAD_TOO_LARGE = 413
INTERNAL_SERVER_ERROR = 500
SERVICE_UNAVAILABLE = 503
CONTINUE = 100

SERVER_HEADER = (b"Server", b"Firecracker API")
DEPRECATION_HEADER = (b"Deprecation", b"true")

# micro-http's canned answer for a connection beyond MAX_CONNECTIONS (byte for byte).
SERVER_FULL_RESPONSE = (
    b"HTTP/1.1 503\r\n"
    b"Server: Firecracker API\r\n"
    b"Connection: close\r\n"
    b"Content-Length: 40\r\n\r\n"
    b'{ "error": "Too many open connections" }'
)

DROPPED_SUFFIX = "\nAll previous unanswered requests will be dropped."


class ApiFault(msgspec.Struct, frozen=True):
    """A request the router refused before it reached the VMM (always a 400 fault_message)."""

    message: str
    deprecation: str | None = None


def fault_body(message: str) -> bytes:
    return json.dumps({"fault_message": message}).encode()


def action_error_response(error: VmmActionError) -> tuple[int, bytes]:
    """(status, body) for a failed action: 413 for an MMDS store over its limit, else 400."""
    status = PAYLOAD_TOO_LARGE if isinstance(error, MmdsLimitExceededError) else BAD_REQUEST
    return status, fault_body(str(error))


def api_fault_response(fault: ApiFault) -> tuple[int, bytes]:
    return BAD_REQUEST, fault_body(fault.message)


def success_status(body: bytes | None) -> int:
    """200 with a JSON body for reads; 204 without one for every state change."""
    return OK if body is not None else NO_CONTENT


def parse_error_response(reason: str) -> tuple[int, bytes]:
    """(status, body) for an HTTP-level parse error (micro-http's ``{"error": ...}`` shape)."""
    return BAD_REQUEST, json.dumps({"error": reason + DROPPED_SUFFIX}).encode()


def unsupported_method_reason() -> str:
    return "Invalid HTTP Method: Unsupported HTTP method."


def payload_too_large_reason(size: int, limit: int) -> str:
    return f"Request payload with size {size} is larger than the limit of {limit} allowed by server."


__all__ = [
    "ApiFault",
    "OK",
    "NO_CONTENT",
    "BAD_REQUEST",
    "PAYLOAD_TOO_LARGE",
    "SERVICE_UNAVAILABLE",
    "SERVER_HEADER",
    "DEPRECATION_HEADER",
    "SERVER_FULL_RESPONSE",
    "action_error_response",
    "api_fault_response",
    "success_status",
    "parse_error_response",
]
