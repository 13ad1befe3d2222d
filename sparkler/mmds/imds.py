"""What the MMDS answers a guest's HTTP request (catalog 7.2-7.4): pure, no sockets, no parsing.

``Mmds`` is the one object per VM behind both faces of the service: the API side (``store``: PUT,
PATCH and GET /mmds; ``configure``: PUT /mmds/config) and the guest side (``respond``: one parsed
HTTP request in, one response out). The network stacks of all MMDS-enabled interfaces share it.

Guest rules, in the order they apply:

* The request target is the JSON pointer: an absolute-form target (``http://host/path``) keeps only
  its path; the query is dropped; runs of ``/`` collapse; one trailing ``/`` is ignored. An empty
  path is ``400 Invalid URI.``
* Only GET and PUT are served; any other method is ``405 Not allowed HTTP method.`` with
  ``Allow: GET, PUT``.
* ``PUT`` works in V1 and V2: it must not carry ``X-Forwarded-For`` (400), must go to exactly
  ``/latest/api/token`` (else 404) and must carry a TTL in ``X-metadata-token-ttl-seconds`` or
  ``X-aws-ec2-metadata-token-ttl-seconds`` (u32, 1..21600; 400 otherwise). 200 answers the token as
  ``text/plain`` and echoes the TTL header.
* ``GET`` in V2 needs a valid token in ``X-metadata-token`` or ``X-aws-ec2-metadata-token`` (401
  otherwise); V1 serves everyone and only counts missing and invalid tokens.
* A GET is answered as JSON (``application/json``) when the request's ``Accept`` is
  ``application/json`` and ``imds_compat`` is off, else in IMDS text form (``text/plain``). A
  missing path is ``404 Resource not found: <path>.``; a value IMDS text cannot show (number, bool,
  array, null) is ``501``.

Header names match case-insensitively. Every error body is plain text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sparkler.mmds.store import (
    DEFAULT_SIZE_LIMIT,
    MmdsStore,
    NotFound,
    OutputFormat,
    UnsupportedValueType,
)
from sparkler.mmds.token import InvalidTtl, TokenAuthority, monotonic_ms

if TYPE_CHECKING:
    from sparkler.config.mmds import MmdsConfig

TOKEN_PATH = "/latest/api/token"
TOKEN_HEADERS = ("x-metadata-token", "x-aws-ec2-metadata-token")
TTL_HEADERS = ("x-metadata-token-ttl-seconds", "x-aws-ec2-metadata-token-ttl-seconds")
REJECTED_HEADER = "x-forwarded-for"

INVALID_URI = "Invalid URI."
METHOD_NOT_ALLOWED = "Not allowed HTTP method."
INVALID_TOKEN = "MMDS token not valid."
NO_TOKEN = (
    "No MMDS token provided. Use `X-metadata-token` or `X-aws-ec2-metadata-token` header to specify "
    "the session token."
)
NO_TTL = (
    "Token time to live value not found. Use `X-metadata-token-ttl-seconds` or "
    "`X-aws-ec2-metadata-token-ttl-seconds` header to specify the token's lifetime."
)

TEXT = "text/plain"
JSON = "application/json"
_U32 = re.compile(r"\+?[0-9]+")


@dataclass(frozen=True)
class GuestRequest:
    """One parsed guest request. ``headers`` keep the names as the guest spelt them."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...] = ()

    def header(self, *names: str) -> tuple[str, str] | None:
        """The first (name, value) whose name is one of ``names`` (lower case), any spelling."""
        for name, value in self.headers:
            if name.lower() in names:
                return name, value
        return None


@dataclass(frozen=True)
class GuestResponse:
    status: int
    body: bytes = b""
    content_type: str = TEXT
    headers: tuple[tuple[str, str], ...] = ()


def _text(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> GuestResponse:
    return GuestResponse(status, message.encode(), TEXT, headers)


def request_path(target: str) -> str:
    """The absolute path of a request target (micro-http's ``get_abs_path``), query dropped."""
    if target[:7].lower() == "http://":
        rest = target[7:]
        slash = rest.find("/")
        target = "" if slash < 0 else rest[slash:]
    elif not target.startswith("/"):
        return ""
    return target.split("?", 1)[0].split("#", 1)[0]


def sanitize_path(path: str) -> str:
    """Runs of ``/`` collapsed into one (Firecracker's ``sanitize_uri``)."""
    return re.sub(r"/{2,}", "/", path)


@dataclass
class MmdsStatistics:
    """Counters of Firecracker's ``mmds`` metrics group, for every interface of the VM together
    (the network stacks count frames and connections here, ``respond`` counts tokens)."""

    rx_accepted: int = 0  # frames for the MMDS (ARP or IPv4 to its address)
    rx_accepted_err: int = 0  # TCP segments refused (answered with RST)
    rx_accepted_unusual: int = 0  # IPv4 but not TCP, fragments, ARP other than requests
    rx_bad_eth: int = 0  # malformed ARP/IPv4/TCP headers
    rx_invalid_token: int = 0
    rx_no_token: int = 0
    rx_count: int = 0  # TCP segments handed to the TCP endpoint
    tx_bytes: int = 0
    tx_count: int = 0
    tx_errors: int = 0
    tx_frames: int = 0
    connections_created: int = 0
    connections_destroyed: int = 0


@dataclass
class Mmds:
    """The data store, the MMDS configuration and the token authority of one VM."""

    size_limit: int = DEFAULT_SIZE_LIMIT
    instance_id: str = "anonymous-instance"
    clock_ms: Callable[[], int] = monotonic_ms
    version: str = "V1"
    imds_compat: bool = False
    store: MmdsStore = field(init=False)
    tokens: TokenAuthority = field(init=False)
    stats: MmdsStatistics = field(init=False, default_factory=MmdsStatistics)

    def __post_init__(self) -> None:
        self.store = MmdsStore(self.size_limit)
        self.tokens = TokenAuthority(self.instance_id, clock_ms=self.clock_ms)

    def configure(self, config: MmdsConfig) -> None:
        """Apply PUT /mmds/config (version and imds_compat; the address belongs to the stacks)."""
        self.version = config.version
        self.imds_compat = config.imds_compat
        self.tokens.set_aad(self.instance_id)

    # --- guest side -------------------------------------------------------------------------
    def statistics(self) -> dict[str, int]:
        """Cumulative counters (the metrics ``mmds`` group)."""
        return dict(vars(self.stats))

    def respond(self, request: GuestRequest) -> GuestResponse:
        path = request_path(request.target)
        if not path:
            return _text(400, INVALID_URI)
        if request.method == "GET":
            return self._get(request, path)
        if request.method == "PUT":
            return self._put(request, path)
        return _text(405, METHOD_NOT_ALLOWED, (("Allow", "GET, PUT"),))

    def _get(self, request: GuestRequest, path: str) -> GuestResponse:
        token = request.header(*TOKEN_HEADERS)
        if token is None:
            self.stats.rx_no_token += 1
            if self.version == "V2":
                return _text(401, NO_TOKEN)
        elif not self.tokens.is_valid(token[1].strip()):
            self.stats.rx_invalid_token += 1
            if self.version == "V2":
                return _text(401, INVALID_TOKEN)
        accept = request.header("accept")
        wants_json = accept is not None and accept[1].strip().lower() == JSON
        fmt = OutputFormat.JSON if wants_json and not self.imds_compat else OutputFormat.IMDS
        try:
            body = self.store.get_value(sanitize_path(path), fmt)
        except NotFound:
            return _text(404, f"Resource not found: {path}.")
        except UnsupportedValueType as e:
            return _text(501, str(e))
        return GuestResponse(200, body.encode(), JSON if fmt is OutputFormat.JSON else TEXT)

    def _put(self, request: GuestRequest, path: str) -> GuestResponse:
        forwarded = request.header(REJECTED_HEADER)
        if forwarded is not None:
            return _text(400, f"Invalid header. Reason: Unsupported header name. Key: {forwarded[0]}")
        if sanitize_path(path) != TOKEN_PATH:
            return _text(404, f"Resource not found: {path}.")
        ttl_header = request.header(*TTL_HEADERS)
        if ttl_header is None:
            return _text(400, NO_TTL)
        name, value = ttl_header
        if not _U32.fullmatch(value.strip()) or int(value) >= 2**32:
            return _text(400, f"Invalid header. Reason: Invalid value. Key:{name}; Value:{value}")
        ttl = int(value)
        try:
            token = self.tokens.generate(ttl)
        except InvalidTtl as e:
            return _text(400, str(e))
        return GuestResponse(200, token.encode(), TEXT, ((name, str(ttl)),))


__all__ = [
    "GuestRequest",
    "GuestResponse",
    "Mmds",
    "MmdsStatistics",
    "NO_TOKEN",
    "INVALID_TOKEN",
    "TOKEN_PATH",
    "request_path",
    "sanitize_path",
]
