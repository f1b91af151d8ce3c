"""The url file store: id format (instance id + 128-bit token), TTL, and refusal of others' ids."""

from __future__ import annotations

import base64
import os
import time

import pytest

from nexusd.services.images.files import FileStore, instance_of


def test_ids_carry_instance_and_128_bit_token(tmp_path):
    store = FileStore(tmp_path, "images-host-0123abcd", ttl=60)
    store.open()
    ids = {store.put(b"png-bytes", "png") for _ in range(50)}
    assert len(ids) == 50
    for file_id in ids:
        instance, token, ext = file_id.split(".")
        assert (instance, ext) == ("images-host-0123abcd", "png")
        assert instance_of(file_id) == "images-host-0123abcd"
        assert len(base64.urlsafe_b64decode(token + "==")) == 16
        path, content_type = store.get(file_id)
        assert path.read_bytes() == b"png-bytes" and content_type == "image/png"
        assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_other_instances_and_malformed_ids_are_refused(tmp_path):
    store = FileStore(tmp_path, "images-a-00000000", ttl=60)
    store.open()
    file_id = store.put(b"x", "webp")
    other = FileStore(tmp_path, "images-b-00000000", ttl=60)
    assert other.get(file_id) is None  # same folder, another instance: not served
    for bad in ("", "x", "../etc/passwd", file_id + "x", file_id.replace(".webp", ".gif"),
                "images-a-00000000.short.png", "images-a-00000000/../" + file_id):
        assert store.get(bad) is None
        assert instance_of(bad) is None or bad.startswith("images-a-00000000.short")


def test_expired_files_are_refused_and_swept(tmp_path):
    store = FileStore(tmp_path, "images-a-00000000", ttl=30)
    store.open()
    old, fresh = store.put(b"old", "png"), store.put(b"new", "png")
    past = time.time() - 31
    os.utime(tmp_path / old, (past, past))
    assert store.get(old) is None and not (tmp_path / old).exists()
    os.utime(tmp_path / fresh, (past, past))
    assert store.sweep() == 1 and os.listdir(tmp_path) == []


def test_instance_id_with_a_dot_is_refused(tmp_path):
    with pytest.raises(ValueError):
        FileStore(tmp_path, "images.bad", ttl=1)
