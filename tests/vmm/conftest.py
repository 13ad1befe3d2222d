"""Fixtures of the controller tests: a fake kernel file and a Controller on a FakeBuilder."""

from __future__ import annotations

import pytest

from sparkler.testing.fake_machine import FakeBuilder
from sparkler.vmm.controller import Controller


@pytest.fixture
def kernel(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(b"\x7fELF")
    return str(path)


@pytest.fixture
def controller():
    return Controller(FakeBuilder(), build_options="opts", instance_id="vm1")
