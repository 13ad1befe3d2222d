"""MmdsStore: PUT/PATCH semantics, RFC 7396 merge patch (examples + properties), size limit, GET."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparkler.mmds.store import (
    LimitExceeded,
    MmdsStore,
    NotFound,
    NotInitialized,
    OutputFormat,
    UnsupportedValueType,
    encode,
    merge_patch,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=15,
)
objects = st.dictionaries(st.text(max_size=4), json_values, max_size=4)


# RFC 7396 appendix A, every example.
@pytest.mark.parametrize(
    "target, patch, result",
    [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_merge_patch_rfc7396_examples(target, patch, result):
    assert merge_patch(target, patch) == result


def _reference_merge(target, patch):
    """RFC 7396 section 2 pseudocode, recursively."""
    if isinstance(patch, dict):
        if not isinstance(target, dict):
            target = {}
        target = dict(target)
        for name, value in patch.items():
            if value is None:
                target.pop(name, None)
            else:
                target[name] = _reference_merge(target.get(name), value)
        return target
    return patch


@settings(max_examples=300, deadline=None)
@given(json_values, json_values)
def test_merge_patch_matches_reference_and_leaves_inputs_alone(target, patch):
    before_t, before_p = json.dumps(target), json.dumps(patch)
    assert merge_patch(target, patch) == _reference_merge(target, patch)
    assert json.dumps(target) == before_t and json.dumps(patch) == before_p


@settings(max_examples=200, deadline=None)
@given(json_values, objects)
def test_merge_patch_is_idempotent(target, patch):
    once = merge_patch(target, patch)
    assert merge_patch(once, patch) == once


def test_merge_patch_deep_nesting_does_not_recurse():
    patch = current = {}
    for _ in range(5000):
        current["a"] = {}
        current = current["a"]
    result = merge_patch({}, patch)
    depth = 0
    while result:
        result = result["a"]
        depth += 1
    assert depth == 5000


def test_store_patch_before_put_is_not_initialized():
    with pytest.raises(NotInitialized):
        MmdsStore().patch({"a": 1})


def test_store_value_is_empty_object_before_put():
    assert MmdsStore().value() == {}


def test_store_put_over_limit_is_refused_and_store_unchanged():
    store = MmdsStore(size_limit=20)
    store.put({"a": "b"})
    with pytest.raises(LimitExceeded):
        store.put({"a": "x" * 30})
    assert store.value() == {"a": "b"}


def test_store_limit_is_compact_json_length_inclusive():
    doc = {"k": "v" * 10}
    store = MmdsStore(size_limit=len(encode(doc)))
    store.put(doc)
    with pytest.raises(LimitExceeded):
        store.patch({"k2": 1})
    assert store.value() == doc


@settings(max_examples=200, deadline=None)
@given(objects, objects, st.integers(2, 200))
def test_store_size_never_exceeds_limit(first, patch, limit):
    store = MmdsStore(size_limit=limit)
    for op, value in (("put", first), ("patch", patch)):
        try:
            getattr(store, op)(value)
        except (LimitExceeded, NotInitialized):
            pass
        assert store.size <= limit or not store.initialized


@pytest.fixture
def store():
    s = MmdsStore()
    s.put({"name": {"first": "John", "second": "Doe"}, "age": 43, "phones": ["+40", "+44"], "a/b": {"c~d": "x"}})
    return s


def test_store_get_object_imds_lists_sorted_keys_with_slash_for_objects(store):
    assert store.get_value("/", OutputFormat.IMDS) == "a/b/\nage\nname/\nphones"
    assert store.get_value("/name", OutputFormat.IMDS) == "first\nsecond"


def test_store_get_json_is_compact_sorted(store):
    assert store.get_value("/name/", OutputFormat.JSON) == '{"first":"John","second":"Doe"}'
    assert store.get_value("/phones/1", OutputFormat.JSON) == '"+44"'


def test_store_get_string_imds_is_raw(store):
    assert store.get_value("/phones/0/", OutputFormat.IMDS) == "+40"


def test_store_get_pointer_escapes(store):
    assert store.get_value("/a~1b/c~0d", OutputFormat.IMDS) == "x"


@pytest.mark.parametrize("path", ["/age", "/phones"])
def test_store_get_non_text_value_in_imds_is_unsupported(store, path):
    with pytest.raises(UnsupportedValueType):
        store.get_value(path, OutputFormat.IMDS)


@pytest.mark.parametrize("path", ["/nope", "/name/first/x", "/phones/2", "/phones/01", "/phones/-1"])
def test_store_get_missing_is_not_found(store, path):
    with pytest.raises(NotFound):
        store.get_value(path, OutputFormat.JSON)
