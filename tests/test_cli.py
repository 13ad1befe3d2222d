"""Command-line grammar, validation and exit codes (Firecracker's, catalog section 2)."""

import json
import subprocess
import sys
import types

import pytest

from sparkler import cli
from sparkler.vmm.runtime_options import FcExitCode, RunOptions


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "sparkler", *args], capture_output=True, text=True, cwd=cwd, timeout=60
    )


def test_parse_args_no_flags_defaults():
    assert cli.parse_args([]) == RunOptions()
    assert RunOptions().mmds_size_limit == 51200


def test_parse_args_equals_form_is_unknown():
    with pytest.raises(cli.ArgParseError, match="wasn't expected"):
        cli.parse_args(["--id=foo"])


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--id", "a", "--id", "b"], "more than once"),
        (["--api-sock", "--no-api"], "Missing value"),
        (["--api-sock"], "Missing value"),
        (["positional"], "wasn't expected"),
        (["--no-api"], "config-file"),
        (["--no-seccomp", "--seccomp-filter", "f"], "cannot be used together"),
        (["--id", ""], "Invalid instance ID"),
        (["--id", "x" * 65], "Invalid instance ID"),
        (["--id", "a_b"], "Invalid instance ID"),
        (["--start-time-us", "-1"], "unsigned"),
        (["--http-api-max-payload-size", "abc"], "unsigned"),
    ],
)
def test_parse_args_bad_input_raises_arg_error(argv, match):
    with pytest.raises(cli.ArgParseError, match=match) as info:
        cli.parse_args(argv)
    assert info.value.exit_code == FcExitCode.ARG_PARSING


def test_parse_args_bad_level_exit_152():
    with pytest.raises(cli.InvalidLevelError) as info:
        cli.parse_args(["--level", "bogus"])
    assert info.value.exit_code == 152


def test_parse_args_help_and_version_short_circuit():
    assert isinstance(cli.parse_args(["--bogus", "--help"]), cli.HelpRequest)
    assert isinstance(cli.parse_args(["-h", "--version"]), cli.HelpRequest)
    assert isinstance(cli.parse_args(["--id", "a", "--id", "b", "--version"]), cli.VersionRequest)


def test_parse_args_all_flags():
    opts = cli.parse_args(
        [
            "--api-sock",
            "/tmp/s",
            "--id",
            "vm-1",
            "--level",
            "warning",
            "--show-level",
            "--show-log-origin",
            "--module",
            "vmm",
            "--boot-timer",
            "--no-api",
            "--config-file",
            "c.json",
            "--start-time-us",
            "12",
            "--http-api-max-payload-size",
            "100",
            "--enable-pci",
            "--no-seccomp",
            "--",
            "x",
            "--y",
        ]
    )
    assert opts.api_sock == "/tmp/s" and opts.instance_id == "vm-1" and opts.level == "Warn"
    assert opts.show_level and opts.show_log_origin and opts.boot_timer and opts.no_api and opts.enable_pci
    assert opts.start_time_us == 12 and opts.http_api_max_payload_size == 100 and opts.mmds_size_limit == 100
    assert opts.extra_args == ("x", "--y") and opts.config_file == "c.json" and opts.no_seccomp


def test_main_version_and_help():
    r = run("--version")
    assert r.returncode == 0 and r.stdout == "Sparkler v" + __import__("sparkler").__version__ + "\n\n"
    r = run("--help")
    assert r.returncode == 0 and "--api-sock <api-sock>" in r.stdout


def test_main_unknown_flag_153():
    r = run("--bogus")
    assert r.returncode == 153 and "Arguments parsing error" in r.stderr


def test_main_bad_level_152():
    assert run("--level", "bogus").returncode == 152


def test_main_no_api_without_config_153():
    r = run("--no-api")
    assert r.returncode == 153 and "config-file" in r.stderr


def test_main_missing_config_file_exit_1(tmp_path):
    r = run("--no-api", "--config-file", str(tmp_path / "nope.json"))
    assert r.returncode == 1 and "Unable to read config file" in r.stdout


@pytest.mark.parametrize(
    "doc, needle",
    [
        (b"{not json", "Configuration for VMM from one single json failed"),
        (json.dumps({"boot-source": {"kernel_image_path": "k"}, "bogus": 1}).encode(), "bogus"),
        (
            json.dumps(
                {"boot-source": {"kernel_image_path": "k"}, "machine-config": {"vcpu_count": 0, "mem_size_mib": 128}}
            ).encode(),
            "vCPUs",
        ),
        (
            json.dumps(
                {"boot-source": {"kernel_image_path": "k"}, "machine-config": {"vcpu_count": 33, "mem_size_mib": 128}}
            ).encode(),
            "vCPUs",
        ),
    ],
)
def test_main_bad_config_exit_1(tmp_path, doc, needle):
    path = tmp_path / "c.json"
    path.write_bytes(doc)
    r = run("--no-api", "--config-file", str(path))
    assert r.returncode == 1 and needle in r.stdout
    assert "Configuration for VMM from one single json failed" in r.stdout


def test_main_dispatches_to_runtime(monkeypatch, tmp_path):
    calls = []
    fake = types.ModuleType("sparkler.vmm.runtime")
    fake.run_from_config = lambda config, options: calls.append(("cfg", config, options)) or 0
    fake.run_api = lambda options, config: calls.append(("api", config, options)) or 7
    monkeypatch.setitem(sys.modules, "sparkler.vmm.runtime", fake)
    import sparkler.vmm

    monkeypatch.setattr(sparkler.vmm, "runtime", fake, raising=False)
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"boot-source": {"kernel_image_path": "k"}}))
    log = tmp_path / "log"
    assert cli.main(["--no-api", "--config-file", str(path), "--log-path", str(log)]) == 0
    assert cli.main(["--api-sock", str(tmp_path / "s"), "--log-path", str(log)]) == 7
    assert [c[0] for c in calls] == ["cfg", "api"]
    assert calls[1][1] is None
    from sparkler import logger

    logger.LOGGER.reset()
