from __future__ import annotations

import pytest

from tests.helpers.etcd import Etcd


@pytest.fixture
def etcd(tmp_path):
    """A real etcd on free ports, stopped after the test."""
    server = Etcd(tmp_path / "etcd").start()
    yield server
    server.stop()
