"""Firecracker-format log lines (catalog section 8.1)."""

import os
import re
import threading

from sparkler.host.thread_name import prctl_set_name
from sparkler.logger import Logger

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9} \[(?P<tags>[^\]]*)\] (?P<msg>.*)$")


def _lines(path):
    return [LINE.match(line) for line in path.read_text().splitlines()]


def test_logger_default_format_main_thread(tmp_path):
    log = Logger()
    log.configure(log_path=str(tmp_path / "l"), instance_id="vm-1")
    log.info("hello")
    (m,) = _lines(tmp_path / "l")
    assert m["tags"] == "vm-1:main" and m["msg"] == "hello"


def test_logger_levels_filter(tmp_path):
    log = Logger()
    log.configure(log_path=str(tmp_path / "l"), level="warning", show_level=True)
    log.error("e")
    log.warn("w")
    log.info("i")
    log.debug("d")
    assert [m["tags"] for m in _lines(tmp_path / "l")] == [
        "anonymous-instance:main:ERROR",
        "anonymous-instance:main:WARN",
    ]


def test_logger_show_log_origin_names_caller(tmp_path):
    log = Logger()
    log.configure(log_path=str(tmp_path / "l"), show_log_origin=True)
    log.info("x")
    (m,) = _lines(tmp_path / "l")
    assert re.fullmatch(r"anonymous-instance:main:.*tests/test_logger\.py:\d+", m["tags"])


def test_logger_thread_name_from_prctl(tmp_path):
    log = Logger()
    log.configure(log_path=str(tmp_path / "l"))

    def body():
        prctl_set_name("fc_vcpu 0")
        log.info("v")

    t = threading.Thread(target=body)
    t.start()
    t.join()
    (m,) = _lines(tmp_path / "l")
    assert m["tags"] == "anonymous-instance:fc_vcpu 0"


def test_logger_fifo_without_reader_drops_and_counts(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    log = Logger()
    log.configure(log_path=str(fifo))  # O_RDWR: opens with no reader
    for _ in range(20000):
        log.info("x" * 100)
    stats = log.statistics()
    assert stats.missed_log_count > 0 and stats.lines_written > 0
    log.reset()


def test_logger_module_filter(tmp_path):
    log = Logger()
    log.configure(log_path=str(tmp_path / "l"), module="tests::test_logger")
    log.info("kept")
    log.configure(module="sparkler.vmm")
    log.info("dropped")
    assert [m["msg"] for m in _lines(tmp_path / "l")] == ["kept"]
