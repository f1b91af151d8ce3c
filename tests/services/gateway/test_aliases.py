"""The gateway's [aliases] table (gateway/aliases.py): parsing, SIGHUP, collisions with served
models, a bad table at start; and the chat SSE reader the protocol translations share
(gateway/chatstream.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nexusd.runtime.errors import ApiError
from nexusd.services.gateway.aliases import AliasError, conflicts, load_aliases
from nexusd.services.gateway.chatstream import ChatStreamReader
from tests.helpers.net import free_port
from tests.helpers.proc import REPO, service_env
from tests.services.gateway.protocol_stack import protocol_stack


def test_aliases_table(tmp_path):
    assert load_aliases(tmp_path / "absent.toml") == {}  # the file is optional
    path = tmp_path / "upstreams.toml"
    path.write_text('[aliases]\n"claude-sonnet-4-5" = "smollm2:135m"\ngpt-5 = "smollm2:135m"\n'
                    '[upstreams.other]\nbase_url = "http://10.0.0.9:8000/v1"\n')  # not ours: left alone
    assert load_aliases(path) == {"claude-sonnet-4-5": "smollm2:135m", "gpt-5": "smollm2:135m"}
    assert conflicts(load_aliases(path), {"gpt-5", "tiny"}) == ["gpt-5"]


@pytest.mark.parametrize(("text", "why"), [
    ("[aliases\n", "not valid TOML"),
    ('aliases = "x"\n', "must be a table"),
    ('[aliases]\na = ""\n', "non-empty string"),
    ('[aliases]\na = 3\n', "non-empty string"),
    ('[aliases]\na = "b"\nb = "model"\n', "another alias"),
])
def test_bad_tables(tmp_path, text, why):
    path = tmp_path / "upstreams.toml"
    path.write_text(text)
    with pytest.raises(AliasError, match=why):
        load_aliases(path)


def test_chat_stream_reader_cuts_anywhere():
    data = (b'data: {"a": 1}\r\n\r\n: keep-alive\r\n\r\ndata: {"b": 2}\n\ndata: not json\n\n'
            b'event: x\ndata: {"c": 3}\n\ndata: [DONE]\n\n')
    for step in (1, 2, 3, 7, len(data)):
        reader = ChatStreamReader()
        got = [c for i in range(0, len(data), step) for c in reader.feed(data[i:i + step])]
        assert got == [{"a": 1}, {"b": 2}, {"c": 3}] and reader.done and reader.buffer == b""


async def test_sighup_rereads_and_collisions_are_set_aside(tmp_path):
    # gpt-4o-mini is a metadata alias the backend declares: the backend's model keeps the name.
    async with protocol_stack(tmp_path, '[aliases]\n"gpt-4o-mini" = "dies-midstream"\n"gpt-5" = "tiny-chat"\n') \
            as (gw, backend, keys):
        service = gw.service
        assert service.alias_conflicts == ["gpt-4o-mini"]
        assert service.proxy.aliases == {"gpt-5": "tiny-chat"}
        (tmp_path / "upstreams.toml").write_text('[aliases]\n"gpt-6" = "tiny-chat"\n')
        await service.reload()  # what SIGHUP runs
        assert service.proxy.aliases == service.protocols.aliases == {"gpt-6": "tiny-chat"}
        (tmp_path / "upstreams.toml").write_text('[aliases]\n"tiny-chat" = "dies-midstream"\n')
        await service.reload()  # names a served model: refused, the previous table stays
        assert service.proxy.aliases == {"gpt-6": "tiny-chat"}
        (tmp_path / "upstreams.toml").write_text('[aliases\n')
        await service.reload()  # not TOML: refused, the previous table stays
        assert service.proxy.aliases == {"gpt-6": "tiny-chat"}


def test_bad_table_at_start_is_a_configuration_error(tmp_path):
    (tmp_path / "upstreams.toml").write_text('[aliases]\na = "b"\nb = "model"\n')
    env = service_env("gateway", free_port(), NEXUS_GATEWAY_OBS_PORT=str(free_port()),
                      NEXUS_GATEWAY_KEYS_FILE=str(tmp_path / "absent-keys"),
                      NEXUS_GATEWAY_UPSTREAMS=str(tmp_path / "upstreams.toml"))
    done = subprocess.run([sys.executable, "-m", "nexusd.cli", "run", "gateway"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 78  # RestartPreventExitStatus: a bad config must not loop
    assert "NEXUS_GATEWAY_UPSTREAMS" in done.stderr and "another alias" in done.stderr


def test_chat_stream_reader_bounds_an_event():
    reader = ChatStreamReader()
    with pytest.raises(ApiError) as e:
        reader.feed(b"data: " + b"x" * (2 << 20))
    assert e.value.status == 502
