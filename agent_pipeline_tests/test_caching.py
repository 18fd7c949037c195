from __future__ import annotations

import pytest

from agent_pipeline.caching import cache_key, content_hash


def test_equal_content_equal_key_whatever_the_key_order():
    assert cache_key("score", {"a": 1, "b": [1, 2]}) == cache_key("score", {"b": [1, 2], "a": 1})


@pytest.mark.parametrize(
    "left, right",
    [
        ({"a": 1}, {"a": 2}),
        ({"a": [1, 2]}, {"a": [2, 1]}),
        ({"a": "1"}, {"a": 1}),
        ({"title": "é"}, {"title": "e"}),
    ],
)
def test_different_content_different_key(left, right):
    assert cache_key("score", left) != cache_key("score", right)


def test_namespace_separates_keys_and_is_part_of_the_key():
    key = cache_key("score", {"a": 1})
    assert key.startswith("agent_pipeline:cache:score:")
    assert key != cache_key("summary", {"a": 1})
    assert len(key.rsplit(":", 1)[1]) == 64 == len(content_hash({"a": 1}))


@pytest.mark.parametrize("namespace", ["", "a:b", "has space"])
def test_bad_namespaces_are_refused(namespace):
    with pytest.raises(ValueError, match="namespace"):
        cache_key(namespace, {})
