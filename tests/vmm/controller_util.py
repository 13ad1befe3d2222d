"""Shared helpers of the controller tests: drive a Controller through the real router."""

from __future__ import annotations

import msgspec

from sparkler.api.router import route
from sparkler.vmm import actions as A


def call(controller, method, path, doc=None):  # noqa: ANN001, ANN201
    body = b"" if doc is None else msgspec.json.encode(doc)
    action = route(method, path, body)
    assert isinstance(action, A.ACTION_TYPES), action
    return controller.handle(action)


def boot(controller, kernel):  # noqa: ANN001, ANN201
    assert call(controller, "PUT", "/boot-source", {"kernel_image_path": kernel}) == A.Empty()
    assert call(controller, "PUT", "/actions", {"action_type": "InstanceStart"}) == A.Empty()
