"""The ``firecracker`` / ``sparkler`` command line: Firecracker's flags, grammar and exit codes.

Grammar (Firecracker's ``utils::arg_parser``, catalog section 2.1), implemented by a small hand
parser (argparse accepts other spellings and costs start-up time):

* only ``--name value`` (two tokens); ``--name=value`` is an unknown argument; a value may not start
  with ``--``; a flag given twice is an error; any other token is an unexpected argument;
* a bare ``--`` ends the flags, the rest is kept as ``RunOptions.extra_args``;
* ``--help``/``-h`` anywhere, then ``--version`` anywhere, short-circuit all other parsing;
* argument errors print ``Arguments parsing error: <why>`` on stderr and exit 153; an invalid
  ``--level`` exits 152 (``FcExitCode.BAD_CONFIGURATION``).

Differences from Firecracker, on purpose:

* An invalid ``--id`` (1 to 64 ASCII letters, digits or ``-``) is an argument error (exit 153);
  Firecracker panics (SIGABRT).
* An unreadable ``--config-file`` or ``--metadata`` file is a logged error with exit code 1, and an
  invalid ``--metadata`` JSON document too (Firecracker panics).
* Name: when the program is invoked as ``firecracker`` (``basename(argv[0])``) it calls itself
  ``Firecracker`` everywhere (``--version`` prints ``Firecracker v<sparkler version>``, the banner of
  ``--help``, the ``Running Firecracker v...`` and ``Firecracker exiting ...`` log lines), so tools
  that parse those texts keep working; otherwise it calls itself ``Sparkler``. The version number is
  always Sparkler's own.

Subcommands outside Firecracker's flag space: a first token ``guest`` runs
``sparkler.guest.cli.main(rest)``, ``demo`` runs ``sparkler.demo.main(rest)`` and ``net`` runs
``sparkler.hostnet.cli.main(rest)`` (taps, network namespaces, NAT). Firecracker has no
positional arguments (it rejects any), so these names cannot clash with a Firecracker command line.

After parsing: the logger is configured from the flags, the config file (if any) is read and
validated with ``sparkler.config.parse_vmm_config`` (errors logged as ``Configuration for VMM from
one single json failed: <why>``, exit 1), then ``sparkler.vmm.runtime`` is imported lazily and runs
``run_from_config(config, options)`` (``--no-api``) or ``run_api(options, config_or_None)``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from sparkler import __version__
from sparkler.vmm.runtime_options import (
    DEFAULT_API_SOCK,
    DEFAULT_HTTP_API_MAX_PAYLOAD_SIZE,
    DEFAULT_INSTANCE_ID,
    FcExitCode,
    RunOptions,
)

if TYPE_CHECKING:
    from sparkler.config import VmmConfig

SNAPSHOT_DATA_FORMAT_VERSION = "11.0.0"  # printed by --snapshot-version (catalog section 2.2)
MAX_INSTANCE_ID_LEN = 64
U64_MAX = 2**64 - 1
SUBCOMMANDS = ("guest", "demo", "net")
_LEVELS = ("off", "trace", "debug", "info", "warn", "warning", "error")


class ArgParseError(Exception):
    """A command-line error: exit code 153 (``FcExitCode.ARG_PARSING``)."""

    exit_code = FcExitCode.ARG_PARSING


class InvalidLevelError(ArgParseError):
    """An unknown ``--level`` value: exit code 152 (``FcExitCode.BAD_CONFIGURATION``)."""

    exit_code = FcExitCode.BAD_CONFIGURATION


class Flag(msgspec.Struct, frozen=True):
    name: str
    help: str
    takes_value: bool = True
    default: str | None = None
    requires: str | None = None
    forbids: str | None = None


FLAGS: dict[str, Flag] = {
    f.name: f
    for f in (
        Flag("api-sock", "Path to unix domain socket used by the API.", default=DEFAULT_API_SOCK),
        Flag("id", "MicroVM unique identifier.", default=DEFAULT_INSTANCE_ID),
        Flag(
            "seccomp-filter",
            "Optional parameter which allows specifying the path to a custom seccomp filter. For "
            "advanced users.",
            forbids="no-seccomp",
        ),
        Flag(
            "no-seccomp",
            "Optional parameter which allows starting and using a microVM without seccomp filtering. "
            "Not recommended.",
            takes_value=False,
            forbids="seccomp-filter",
        ),
        Flag("start-time-us", "Process start time (wall clock, microseconds)."),
        Flag("start-time-cpu-us", "Process start CPU time (wall clock, microseconds)."),
        Flag("parent-cpu-time-us", "Parent process CPU time (wall clock, microseconds)."),
        Flag("config-file", "Path to a file that contains the microVM configuration in JSON format."),
        Flag(
            "metadata",
            "Path to a file that contains metadata in JSON format to add to the mmds.",
        ),
        Flag(
            "no-api",
            "Optional parameter which allows starting and using a microVM without an active API socket.",
            takes_value=False,
            requires="config-file",
        ),
        Flag("log-path", "Path to a fifo or a file used for configuring the logger on startup."),
        Flag(
            "level",
            "Set the logger level (Off, Trace, Debug, Info, Warn, Warning, Error; case-insensitive).",
            default="Info",
        ),
        Flag("module", "Set the logger module filter (a prefix of the module path)."),
        Flag("show-level", "Whether or not to output the level in the logs.", takes_value=False),
        Flag(
            "show-log-origin",
            "Whether or not to include the file path and line number of the log's origin.",
            takes_value=False,
        ),
        Flag("metrics-path", "Path to a fifo or a file used for configuring the metrics on startup."),
        Flag(
            "boot-timer",
            "Whether or not to load boot timer device for logging elapsed time since InstanceStart command.",
            takes_value=False,
        ),
        Flag("version", "Print the binary version number.", takes_value=False),
        Flag(
            "snapshot-version",
            "Print the supported data format version.",
            takes_value=False,
        ),
        Flag(
            "describe-snapshot",
            "Print the data format version of the provided snapshot state file.",
        ),
        Flag(
            "http-api-max-payload-size",
            "Http API request payload max size, in bytes.",
            default=str(DEFAULT_HTTP_API_MAX_PAYLOAD_SIZE),
        ),
        Flag(
            "mmds-size-limit",
            "Mmds data store limit, in bytes (default: the http-api-max-payload-size value).",
        ),
        Flag(
            "enable-pci",
            "Enables PCIe support (all virtio devices use the PCI transport).",
            takes_value=False,
        ),
        Flag(
            "pvm-compat",
            "Sparkler extension: PVM host compatibility mode for stock Linux guests (on, off, auto: on "
            "when the host's KVM is kvm_pvm).",
            default="auto",
        ),
        Flag("help", "Print this help message (also -h).", takes_value=False),
    )
}

_NUMERIC = {
    "start-time-us": U64_MAX,
    "start-time-cpu-us": U64_MAX,
    "parent-cpu-time-us": U64_MAX,
    "http-api-max-payload-size": U64_MAX,
    "mmds-size-limit": U64_MAX,
}


class HelpRequest(msgspec.Struct, frozen=True):
    """``--help``/``-h`` was given."""


class VersionRequest(msgspec.Struct, frozen=True):
    """``--version`` was given."""


# --- parsing ---------------------------------------------------------------------------------------
def split_arguments(argv: Sequence[str]) -> tuple[dict[str, str | bool], tuple[str, ...]]:
    """Firecracker's grammar: ``{flag name: value or True}`` and the tokens after ``--``."""
    values: dict[str, str | bool] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return values, tuple(argv[i + 1 :])
        flag = FLAGS.get(token[2:]) if token.startswith("--") else None
        if flag is None:
            raise ArgParseError(
                f"Found argument '{token}' which wasn't expected, or isn't valid in this context."
            )
        if flag.name in values:
            raise ArgParseError(f"The argument '{flag.name}' was provided more than once.")
        if flag.takes_value:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise ArgParseError(f"Missing value for argument '{flag.name}'.")
            values[flag.name] = argv[i + 1]
            i += 2
        else:
            values[flag.name] = True
            i += 1
    return values, ()


def _check_relations(values: dict[str, str | bool]) -> None:
    for name in values:
        flag = FLAGS[name]
        if flag.requires is not None and flag.requires not in values:
            raise ArgParseError(f"Argument '{flag.requires}' required, but not found.")
        if flag.forbids is not None and flag.forbids in values:
            raise ArgParseError(f"Argument '{flag.forbids}' cannot be used together with argument '{name}'.")


def parse_unsigned(name: str, value: str, limit: int = U64_MAX) -> int:
    """A decimal unsigned integer (Rust's ``str::parse::<u64>`` accepts an optional ``+``)."""
    digits = value[1:] if value.startswith("+") else value
    if not digits.isascii() or not digits.isdigit():
        raise ArgParseError(f"Invalid value for argument '{name}': '{value}' is not an unsigned integer.")
    number = int(digits)
    if number > limit:
        raise ArgParseError(f"Invalid value for argument '{name}': {value} is too large (at most {limit}).")
    return number


def validate_instance_id(instance_id: str) -> None:
    """1 to 64 ASCII letters, digits or ``-`` (Firecracker: ``validate_instance_id``)."""
    if not 1 <= len(instance_id) <= MAX_INSTANCE_ID_LEN:
        raise ArgParseError(
            f"Invalid instance ID '{instance_id}': it must be 1 to {MAX_INSTANCE_ID_LEN} characters long."
        )
    bad = [c for c in instance_id if not (c == "-" or (c.isascii() and c.isalnum()))]
    if bad:
        raise ArgParseError(
            f"Invalid instance ID '{instance_id}': invalid character {bad[0]!r} "
            "(only ASCII letters, digits and '-' are allowed)."
        )


def canonical_level(value: str) -> str:
    """The canonical level name for ``--level`` (case-insensitive; ``Warning`` -> ``Warn``)."""
    low = value.lower()
    if low not in _LEVELS:
        raise InvalidLevelError(
            f"Invalid value for argument 'level': '{value}'; expected one of Off, Trace, Debug, Info, "
            "Warn, Warning, Error (case-insensitive)."
        )
    return "Warn" if low == "warning" else low.capitalize()


def parse_args(argv: Sequence[str]) -> RunOptions | HelpRequest | VersionRequest:
    """Parse Firecracker's command line. Raises ArgParseError (153) or InvalidLevelError (152)."""
    if "--help" in argv or "-h" in argv:
        return HelpRequest()
    if "--version" in argv:
        return VersionRequest()
    values, extra = split_arguments(argv)
    _check_relations(values)

    def text(name: str) -> str | None:
        value = values.get(name)
        return value if isinstance(value, str) else None

    def number(name: str) -> int | None:
        value = text(name)
        return None if value is None else parse_unsigned(name, value, _NUMERIC[name])

    instance_id = text("id")
    if instance_id is None:
        instance_id = DEFAULT_INSTANCE_ID
    if not values.get("snapshot-version") and "describe-snapshot" not in values:
        validate_instance_id(instance_id)
    level = text("level")
    payload = number("http-api-max-payload-size")
    return RunOptions(
        api_sock=text("api-sock") or DEFAULT_API_SOCK,
        no_api="no-api" in values,
        config_file=text("config-file"),
        boot_timer="boot-timer" in values,
        instance_id=instance_id,
        log_path=text("log-path"),
        level="Info" if level is None else canonical_level(level),
        show_level="show-level" in values,
        show_log_origin="show-log-origin" in values,
        module=text("module"),
        metrics_path=text("metrics-path"),
        http_api_max_payload_size=DEFAULT_HTTP_API_MAX_PAYLOAD_SIZE if payload is None else payload,
        mmds_size_limit=number("mmds-size-limit"),
        no_seccomp="no-seccomp" in values,
        seccomp_filter=text("seccomp-filter"),
        start_time_us=number("start-time-us"),
        start_time_cpu_us=number("start-time-cpu-us"),
        parent_cpu_time_us=number("parent-cpu-time-us"),
        metadata=text("metadata"),
        enable_pci="enable-pci" in values,
        describe_snapshot=text("describe-snapshot"),
        snapshot_version="snapshot-version" in values,
        extra_args=extra,
        pvm_compat=_pvm_compat(text("pvm-compat")),
    )


def _pvm_compat(value: str | None) -> str:
    if value is None:
        return "auto"
    if value not in ("on", "off", "auto"):
        raise ArgParseError(f"Invalid value for argument 'pvm-compat': '{value}'; expected one of on, off, auto.")
    return value


# --- texts ------------------------------------------------------------------------------------------
def program_name(argv0: str | None = None) -> str:
    """``Firecracker`` when invoked as ``firecracker``, else ``Sparkler``."""
    if argv0 is None:
        argv0 = sys.argv[0] if sys.argv else ""
    return "Firecracker" if os.path.basename(argv0) == "firecracker" else "Sparkler"


def version_text(name: str) -> str:
    return f"{name} v{__version__}\n"


def formatted_help() -> str:
    """The flag list, in Firecracker's layout (sorted by name, value placeholder, default)."""
    rows = []
    for name in sorted(FLAGS):
        flag = FLAGS[name]
        usage = f"--{name} <{name}>" if flag.takes_value else f"--{name}"
        text = flag.help
        if flag.default is not None:
            text += f' [default: "{flag.default}"]'
        rows.append((usage, text))
    width = max(len(usage) for usage, _ in rows)
    lines = ["optional arguments:"]
    lines += [f"  {usage.ljust(width)}  {text}" for usage, text in rows]
    lines += ["", "Subcommands (Sparkler only): guest ..., demo ..., net ... (see `<subcommand> --help`)."]
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] in SUBCOMMANDS:
        return _run_subcommand(argv[0], argv[1:])
    name = program_name()
    try:
        parsed = parse_args(argv)
    except ArgParseError as e:
        sys.stderr.write(f"Arguments parsing error: {e}\n\nFor more information try --help.\n")
        return int(e.exit_code)
    if isinstance(parsed, HelpRequest):
        sys.stdout.write(version_text(name) + "\n" + formatted_help() + "\n")
        return FcExitCode.OK
    if isinstance(parsed, VersionRequest):
        sys.stdout.write(version_text(name) + "\n")
        return FcExitCode.OK
    if parsed.snapshot_version:
        sys.stdout.write(f"v{SNAPSHOT_DATA_FORMAT_VERSION}\n")
        return FcExitCode.OK
    if parsed.describe_snapshot is not None:
        return _describe_snapshot(parsed.describe_snapshot)
    return _run(parsed, name)


def _run_subcommand(command: str, argv: list[str]) -> int:
    if command == "guest":
        from sparkler.guest import cli as guest_cli  # type: ignore[attr-defined]

        result = guest_cli.main(argv)
    elif command == "net":
        from sparkler.hostnet import cli as net_cli

        result = net_cli.main(argv)
    else:
        from sparkler import demo  # type: ignore[attr-defined]

        result = demo.main(argv)
    return 0 if result is None else int(result)


def _describe_snapshot(path: str) -> int:
    """``--describe-snapshot``: delegated to ``sparkler.snapshot.format.describe_snapshot(path)``
    (returns the version text such as ``v11.0.0``; raises an Exception with a message on error)."""
    try:
        from sparkler.snapshot import format as snapshot_format  # type: ignore[attr-defined]

        describe = snapshot_format.describe_snapshot
    except (ImportError, AttributeError):
        sys.stderr.write("Error: snapshot support is not available in this build of Sparkler.\n")
        return FcExitCode.GENERIC
    try:
        version = describe(path)
    except Exception as e:  # noqa: BLE001 - any failure is reported, as Firecracker does
        sys.stderr.write(f"Error: unable to describe the snapshot {path}: {e}\n")
        return FcExitCode.GENERIC
    sys.stdout.write(f"{version}\n")
    return FcExitCode.OK


def _run(options: RunOptions, name: str) -> int:
    from sparkler import logger as log
    from sparkler.errors import ConfigError, SparklerError

    try:
        log.configure(
            instance_id=options.instance_id,
            log_path=options.log_path,
            level=options.level,
            show_level=options.show_level,
            show_log_origin=options.show_log_origin,
            module=options.module,
        )
    except ConfigError as e:
        sys.stderr.write(f"Failed to initialize the logger: {e}\n")
        return FcExitCode.GENERIC
    if name == "Firecracker":
        _name_main_thread("firecracker")
    log.info(f"Running {name} v{__version__}")

    def fail(message: str) -> int:
        log.error(message)
        if options.log_path is not None:  # the log does not go to the terminal: say it there too
            sys.stderr.write(message + "\n")
        log.error(f"{name} exiting with error. exit_code={int(FcExitCode.GENERIC)}")
        return FcExitCode.GENERIC

    config: VmmConfig | None = None
    if options.config_file is not None:
        try:
            with open(options.config_file, "rb") as f:
                data = f.read()
        except OSError as e:
            return fail(f"Unable to read config file {options.config_file}: {e.strerror}")
        from sparkler.config import parse_vmm_config

        try:
            config = parse_vmm_config(data)
        except ConfigError as e:
            return fail(f"Configuration for VMM from one single json failed: {e}")
    if options.metadata is not None:
        try:
            with open(options.metadata, encoding="utf-8") as f:
                metadata = f.read()
        except (OSError, UnicodeDecodeError) as e:
            return fail(f"Unable to read metadata file {options.metadata}: {getattr(e, 'strerror', e)}")
        import json

        try:
            json.loads(metadata)
        except ValueError as e:
            return fail(f"Invalid JSON in metadata file {options.metadata}: {e}")
        options = msgspec.structs.replace(options, metadata_json=metadata)

    from sparkler.vmm import runtime

    try:
        if options.no_api:
            assert config is not None  # --no-api requires --config-file (checked by the parser)
            code = runtime.run_from_config(config, options)
        else:
            code = runtime.run_api(options, config)
    except SparklerError as e:
        return fail(str(e))
    code = int(code)
    if code == FcExitCode.OK:
        log.info(f"{name} exiting successfully. exit_code=0")
    else:
        log.error(f"{name} exiting with error. exit_code={code}")
    return code


def _name_main_thread(name: str) -> None:
    try:
        from sparkler.host.thread_name import prctl_set_name

        prctl_set_name(name)
    except OSError:
        pass


__all__ = [
    "main",
    "parse_args",
    "split_arguments",
    "validate_instance_id",
    "canonical_level",
    "parse_unsigned",
    "formatted_help",
    "program_name",
    "ArgParseError",
    "InvalidLevelError",
    "HelpRequest",
    "VersionRequest",
    "FLAGS",
    "FcExitCode",
    "RunOptions",
]
