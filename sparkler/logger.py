"""Firecracker-format log lines (catalog section 8.1). Stdlib only; cheap when a level is disabled.

Every line is written with one ``write(2)``::

    <local time YYYY-MM-DDTHH:MM:SS.nnnnnnnnn> [<instance id>:<thread>[:<LEVEL>][:<file>:<line>]] <message>

* ``<thread>`` is the OS thread name as Firecracker prints it: ``main`` for the main (VMM) thread,
  the kernel name for other threads (``fc_api``, ``fc_vcpu 0`` ... set with
  ``sparkler.host.thread_name.prctl_set_name``), ``-`` for a thread that never named itself.
* ``<LEVEL>`` (``ERROR``/``WARN``/``INFO``/``DEBUG``/``TRACE``) only with ``show_level``.
* ``<file>:<line>`` only with ``show_log_origin``: the Python source of the caller, relative to the
  directory that holds the ``sparkler`` package (``sparkler/vmm/builder.py:123``).
* ``module`` is a prefix filter on the caller's Python module name. Rust-style ``vmm::builder`` is
  accepted (``::`` becomes ``.``) and the leading ``sparkler.`` is optional: ``vmm`` and
  ``sparkler.vmm`` both select ``sparkler.vmm.*``. With a filter set, lines whose module is unknown
  are dropped (as in Firecracker).

Levels: ``Off`` < ``Error`` < ``Warn`` < ``Info`` (default) < ``Debug`` < ``Trace``; names are
case-insensitive and ``Warning`` means ``Warn``.

Destination: stdout (fd 1) until configured; a ``log_path`` is opened like Firecracker does,
``O_RDWR|O_CREAT|O_NONBLOCK`` without ``O_APPEND``/``O_TRUNC`` (mode 0666 & umask), so a FIFO opens
with no reader and an existing file is overwritten from offset 0. A write that fails (``EAGAIN`` on a
full FIFO, a closed stdout) drops the rest of that line and counts it in ``missed_log_count``.

``configure`` changes the given fields only; ``update`` has ``PUT /logger`` semantics (omitted
``level`` resets to Info, other omitted fields keep their value). Firecracker 1.16's per-callsite
rate limiting is not implemented; ``rate_limited_log_count`` is always 0.

Use the module-level default logger: ``from sparkler import logger as log; log.info("...")``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import msgspec

from sparkler.errors import ConfigError
from sparkler.host.thread_name import current_name

OFF, ERROR, WARN, INFO, DEBUG, TRACE = range(6)

LEVEL_NAMES = ("Off", "Error", "Warn", "Info", "Debug", "Trace")
_LINE_LEVEL = ("OFF", "ERROR", "WARN", "INFO", "DEBUG", "TRACE")
_BY_NAME = {name.lower(): i for i, name in enumerate(LEVEL_NAMES)} | {"warning": WARN}

DEFAULT_INSTANCE_ID = "anonymous-instance"
STDOUT_FD = 1
_ORIGIN_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def parse_level(value: str | int) -> int:
    """The level number for a name (case-insensitive, ``Warning`` = ``Warn``) or a number 0..5."""
    if isinstance(value, int) and not isinstance(value, bool) and OFF <= value <= TRACE:
        return value
    if isinstance(value, str):
        level = _BY_NAME.get(value.lower())
        if level is not None:
            return level
    raise ConfigError(
        f"Invalid log level: {value!r}; expected one of Off, Trace, Debug, Info, Warn, Warning, Error."
    )


class LoggerStatistics(msgspec.Struct, frozen=True):
    lines_written: int
    missed_log_count: int
    rate_limited_log_count: int


def _normalize_module(module: str | None) -> str | None:
    if not module:
        return None
    return module.replace("::", ".")


class Logger:
    """A thread-safe Firecracker-format line logger writing to one fd."""

    def __init__(self, fd: int = STDOUT_FD) -> None:
        # Re-entrant: a fatal-signal handler (sparkler.host.signals) runs on the main thread between
        # two bytecodes, possibly while that thread is inside _write, and logs its own lines.
        self._lock = threading.RLock()
        self._fd = fd
        self._owns_fd = False
        self._path: str | None = None
        self._max = INFO  # read without the lock by the fast path; an int store is atomic
        self._instance_id = DEFAULT_INSTANCE_ID
        self._show_level = False
        self._show_origin = False
        self._module: str | None = None
        self._written = 0
        self._missed = 0
        self._ts_second = -1
        self._ts_prefix = ""

    # --- configuration ---------------------------------------------------------------------------
    @property
    def level(self) -> str:
        return LEVEL_NAMES[self._max]

    @property
    def instance_id(self) -> str:
        return self._instance_id

    @property
    def log_path(self) -> str | None:
        return self._path

    @property
    def show_level(self) -> bool:
        return self._show_level

    @property
    def show_log_origin(self) -> bool:
        return self._show_origin

    @property
    def module(self) -> str | None:
        return self._module

    @property
    def fd(self) -> int:
        return self._fd

    def configure(
        self,
        *,
        instance_id: str | None = None,
        log_path: str | None = None,
        level: str | int | None = None,
        show_level: bool | None = None,
        show_log_origin: bool | None = None,
        module: str | None = None,
    ) -> None:
        """Change the given settings; None keeps a setting (``module=""`` clears the filter).

        Raises ConfigError for an unknown level or a log path that cannot be opened; nothing is
        changed in that case.
        """
        new_max = None if level is None else parse_level(level)
        new_fd = None
        if log_path is not None:
            try:
                new_fd = os.open(log_path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
            except OSError as e:
                raise ConfigError(f"Failed to open the log file {log_path}: {e.strerror}") from None
        with self._lock:
            if new_fd is not None:
                self._replace_fd(new_fd, owned=True)
                self._path = log_path
            if instance_id is not None:
                self._instance_id = instance_id
            if show_level is not None:
                self._show_level = show_level
            if show_log_origin is not None:
                self._show_origin = show_log_origin
            if module is not None:
                self._module = _normalize_module(module)
            if new_max is not None:
                self._max = new_max

    def update(self, config: Any) -> None:
        """``PUT /logger``: apply a LoggerConfig-like object (attributes log_path, level, show_level,
        show_log_origin, module; None = not given). An omitted level resets to Info."""
        self.configure(
            log_path=getattr(config, "log_path", None),
            level=getattr(config, "level", None) or "Info",
            show_level=getattr(config, "show_level", None),
            show_log_origin=getattr(config, "show_log_origin", None),
            module=getattr(config, "module", None),
        )

    def set_fd(self, fd: int) -> None:
        """Write to ``fd`` (not owned: never closed by the logger). For tests and embedding."""
        with self._lock:
            self._replace_fd(fd, owned=False)
            self._path = None

    def reset(self) -> None:
        """Back to the start-up state (stdout, Info, no decorations); counters are kept."""
        with self._lock:
            self._replace_fd(STDOUT_FD, owned=False)
            self._path = None
            self._max = INFO
            self._instance_id = DEFAULT_INSTANCE_ID
            self._show_level = self._show_origin = False
            self._module = None

    def _replace_fd(self, fd: int, *, owned: bool) -> None:
        if self._owns_fd and self._fd != fd:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd, self._owns_fd = fd, owned

    def statistics(self) -> LoggerStatistics:
        return LoggerStatistics(self._written, self._missed, 0)

    def is_enabled(self, level: str | int) -> bool:
        return parse_level(level) <= self._max

    # --- logging -----------------------------------------------------------------------------------
    def error(self, msg: str, *args: object) -> None:
        if self._max >= ERROR:
            self._emit(ERROR, msg, args, 2)

    def warn(self, msg: str, *args: object) -> None:
        if self._max >= WARN:
            self._emit(WARN, msg, args, 2)

    warning = warn

    def info(self, msg: str, *args: object) -> None:
        if self._max >= INFO:
            self._emit(INFO, msg, args, 2)

    def debug(self, msg: str, *args: object) -> None:
        if self._max >= DEBUG:
            self._emit(DEBUG, msg, args, 2)

    def trace(self, msg: str, *args: object) -> None:
        if self._max >= TRACE:
            self._emit(TRACE, msg, args, 2)

    def log(self, level: str | int, msg: str, *args: object) -> None:
        lvl = parse_level(level)
        if lvl != OFF and self._max >= lvl:
            self._emit(lvl, msg, args, 2)

    def _emit(self, level: int, msg: str, args: tuple[object, ...], depth: int) -> None:
        """Format and write one line; ``depth`` = frames from here to the caller of the API."""
        if args:
            msg = msg % args
        parts = [self._instance_id, _thread_label()]
        if self._show_level:
            parts.append(_LINE_LEVEL[level])
        module = self._module
        if self._show_origin or module is not None:
            frame = sys._getframe(depth)
            if module is not None and not _module_matches(frame.f_globals.get("__name__"), module):
                return
            if self._show_origin:
                filename = frame.f_code.co_filename
                if filename.startswith(_ORIGIN_ROOT):
                    filename = filename[len(_ORIGIN_ROOT) :]
                parts.append(f"{filename}:{frame.f_lineno}")
        line = f"{self._timestamp()} [{':'.join(parts)}] {msg}\n".encode("utf-8", "replace")
        self._write(line)

    def _timestamp(self) -> str:
        ns = time.time_ns()
        second, frac = divmod(ns, 1_000_000_000)
        if second != self._ts_second:
            # Two threads may race here; both compute the same string for the same second.
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(second))
            self._ts_second, self._ts_prefix = second, prefix
            return f"{prefix}.{frac:09d}"
        return f"{self._ts_prefix}.{frac:09d}"

    def _write(self, line: bytes) -> None:
        with self._lock:
            view = memoryview(line)
            try:
                while view:
                    n = os.write(self._fd, view)
                    view = view[n:]
            except OSError:  # EAGAIN (full FIFO), EPIPE, EBADF ...: Firecracker drops and counts
                self._missed += 1
                return
            self._written += 1


def _thread_label() -> str:
    if threading.current_thread() is threading.main_thread():
        return "main"
    name = current_name()
    if not name or name == _process_name():
        return "-"  # inherited from the process: the thread never named itself
    return name


_PROCESS_NAME: list[str] = []


def _process_name() -> str:
    if not _PROCESS_NAME:
        try:
            with open("/proc/self/comm", "rb") as f:
                _PROCESS_NAME.append(f.read().rstrip(b"\n").decode(errors="replace"))
        except OSError:
            _PROCESS_NAME.append("")
    return _PROCESS_NAME[0]


def _module_matches(name: object, prefix: str) -> bool:
    if not isinstance(name, str):
        return False
    return name.startswith(prefix) or name.removeprefix("sparkler.").startswith(prefix)


# --- the default logger -------------------------------------------------------------------------
LOGGER = Logger()


def error(msg: str, *args: object) -> None:
    if LOGGER._max >= ERROR:
        LOGGER._emit(ERROR, msg, args, 2)


def warn(msg: str, *args: object) -> None:
    if LOGGER._max >= WARN:
        LOGGER._emit(WARN, msg, args, 2)


warning = warn


def info(msg: str, *args: object) -> None:
    if LOGGER._max >= INFO:
        LOGGER._emit(INFO, msg, args, 2)


def debug(msg: str, *args: object) -> None:
    if LOGGER._max >= DEBUG:
        LOGGER._emit(DEBUG, msg, args, 2)


def trace(msg: str, *args: object) -> None:
    if LOGGER._max >= TRACE:
        LOGGER._emit(TRACE, msg, args, 2)


def configure(**settings: Any) -> None:
    """``LOGGER.configure(...)``: instance_id, log_path, level, show_level, show_log_origin, module."""
    LOGGER.configure(**settings)


def update(config: Any) -> None:
    """``LOGGER.update(config)``: PUT /logger semantics."""
    LOGGER.update(config)


def is_enabled(level: str | int) -> bool:
    return LOGGER.is_enabled(level)


def statistics() -> LoggerStatistics:
    return LOGGER.statistics()


__all__ = [
    "Logger",
    "LoggerStatistics",
    "LOGGER",
    "LEVEL_NAMES",
    "parse_level",
    "error",
    "warn",
    "warning",
    "info",
    "debug",
    "trace",
    "configure",
    "update",
    "is_enabled",
    "statistics",
]
