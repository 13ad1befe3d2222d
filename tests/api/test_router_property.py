"""Property: route() never raises and always returns an action or a fault."""

from hypothesis import given, settings
from hypothesis import strategies as st

from sparkler.api.faults import ApiFault
from sparkler.api.router import route
from sparkler.vmm.actions import ACTION_TYPES

KNOWN_PATHS = [
    "/",
    "/version",
    "/actions",
    "/boot-source",
    "/machine-config",
    "/cpu-config",
    "/logger",
    "/metrics",
    "/serial",
    "/vm",
    "/vm/config",
    "/drives/x",
    "/network-interfaces/y",
    "/pmem/z",
    "/balloon",
    "/mmds",
    "/snapshot/load",
    "/hotplug/memory",
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
methods = st.sampled_from(["GET", "PUT", "PATCH", "DELETE", "POST", "get", ""]) | st.text(max_size=8)
paths = st.sampled_from(KNOWN_PATHS) | st.text(max_size=40)


def _bodies():
    import msgspec

    fields = st.sampled_from(
        [
            "action_type",
            "kernel_image_path",
            "vcpu_count",
            "mem_size_mib",
            "state",
            "level",
            "metrics_path",
            "drive_id",
            "smt",
            "cpu_template",
            "msr_modifiers",
            "serial_out_path",
            "rate_limiter",
        ]
    )
    objects = st.dictionaries(fields | st.text(max_size=8), json_values, max_size=5)
    return st.binary(max_size=64) | objects.map(msgspec.json.encode) | json_values.map(msgspec.json.encode)


@settings(max_examples=1500, deadline=None)
@given(methods, paths, _bodies())
def test_route_never_raises_and_answers_action_or_fault(method, path, body):
    result = route(method, path, body)
    assert isinstance(result, ApiFault) or isinstance(result, ACTION_TYPES)
    if isinstance(result, ApiFault):
        assert isinstance(result.message, str) and result.message
