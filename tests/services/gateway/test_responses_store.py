"""The Responses store (gateway/response_store.py): bounded by count, bytes and age, scoped per
API key, and a 404 that tells where conversations live."""

from __future__ import annotations

import pytest

from nexusd.runtime.errors import ApiError
from nexusd.services.gateway.response_store import ResponseStore


def response(rid: str, text: str = "hi") -> dict:
    return {"id": rid, "object": "response", "output": [{"type": "message", "content": [{"text": text}]}]}


def test_keys_never_read_each_other():
    store = ResponseStore(10, 1 << 20, 60)
    store.put("key-a", response("resp_1"), [{"role": "user", "content": "x"}], now=0)
    assert store.get("key-a", "resp_1", now=1).conversation == [{"role": "user", "content": "x"}]
    with pytest.raises(ApiError) as e:
        store.get("key-b", "resp_1", now=1)
    assert e.value.status == 404 and "gateway that answered" in e.value.message
    with pytest.raises(ApiError):
        store.delete("key-b", "resp_1", now=1)
    store.delete("key-a", "resp_1", now=1)
    with pytest.raises(ApiError):
        store.get("key-a", "resp_1")


def test_count_bytes_and_ttl_bounds():
    store = ResponseStore(2, 1 << 20, 60)
    for i in range(3):
        store.put("k", response(f"resp_{i}"), [], now=i)
    assert [rid for _, rid in store.items] == ["resp_1", "resp_2"]  # the oldest went first
    with pytest.raises(ApiError):
        store.get("k", "resp_2", now=62.5)  # expired
    one = len(b'{"id":"resp_0","object":"response","output":[{"type":"message","content":[{"text":"hi"}]}]}') + 2
    store = ResponseStore(100, 2 * one, 60)
    for i in range(3):
        assert store.put("k", response(f"resp_{i}"), [], now=0)
    assert len(store.items) == 2 and store.bytes <= 2 * one
    assert not store.put("k", response("resp_big", "x" * 4 * one), [], now=0)  # alone over the bound
    assert len(store.items) == 2
