from __future__ import annotations

import pytest
from openai import AsyncOpenAI

from nexusd.services.images import ImagesService
from tests.runtime.support import serve_inprocess


@pytest.fixture
async def stub(tmp_path):
    """The images service with the stub backend, in process, on a free port."""
    async with serve_inprocess(ImagesService, cache_dir=str(tmp_path / "cache")) as server:
        yield server


def client_for(server) -> AsyncOpenAI:
    # max_retries=0: a 429 or 5xx must reach the test, not be retried away.
    return AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture
async def client(stub):
    async with client_for(stub) as c:
        yield c


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """A tiny random-weight Stable Diffusion pipeline on disk, built once per session."""
    from fixtures.tiny_pipeline import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd"))
