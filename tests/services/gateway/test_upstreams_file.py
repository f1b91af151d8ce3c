"""The upstreams file (gateway/upstreams.py): one parse, errors naming the line, keys from a
variable or a file; the fallback lists (gateway/fallbacks.py); the usage chunk taken out of a
stream the client did not ask it for (gateway/streamusage.py)."""

from __future__ import annotations

import json

import pytest

from nexusd.services.gateway.fallbacks import Fallbacks
from nexusd.services.gateway.streamusage import UsageChunkFilter, ask_for_usage
from nexusd.services.gateway.upstreams import UpstreamsFileError, load_file, synthesise

GOOD = """\
# a team's vLLM and a hosted provider
[upstreams.vllm-a]
base_url = "http://10.0.0.7:8000/v1/"
api_key_env = "VLLM_A_KEY"
models = ["qwen3-32b"]
max_inflight = 64
timeout = 600

[upstreams."hosted"]
base_url = "https://api.example.com/v1"
api_key_file = "hosted-key"
operations = ["chat.completions", "embeddings"]

[upstreams.local]
base_url = "http://127.0.0.1:8080/v1"

[fallbacks]
big = ["qwen3-32b", "smollm2:135m"]

[aliases]
gpt-4o = "qwen3-32b"
"""


def test_the_whole_file(tmp_path):
    path = tmp_path / "upstreams.toml"
    path.write_text(GOOD)
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "hosted-key").write_text("sk-hosted\n")
    loaded = load_file(path, {"VLLM_A_KEY": "sk-vllm", "CREDENTIALS_DIRECTORY": str(tmp_path / "creds")})
    vllm, hosted, local = loaded.upstreams["vllm-a"], loaded.upstreams["hosted"], loaded.upstreams["local"]
    assert vllm.base_url == "http://10.0.0.7:8000/v1" and vllm.key == "sk-vllm"
    assert vllm.url("/v1/chat/completions?x=1") == "http://10.0.0.7:8000/v1/chat/completions?x=1"
    assert vllm.timeout is not None and vllm.timeout.sock_read == 600
    assert hosted.key == "sk-hosted" and hosted.auth == {"Authorization": "Bearer sk-hosted"}
    assert local.key == "" and local.auth == {} and local.config.poll_interval == 30
    assert local.config.operations == ["chat.completions", "completions", "embeddings"]
    assert hosted.headers({"X-Nexus-Internal-Token": "t", "Content-Type": "application/json"}) == {
        "Content-Type": "application/json", "Authorization": "Bearer sk-hosted"}
    assert loaded.fallbacks == {"big": ["qwen3-32b", "smollm2:135m"]}
    assert loaded.aliases == {"gpt-4o": "qwen3-32b"}
    assert "sk-" not in repr(loaded.upstreams)  # a repr in a log line or a traceback shows no key
    doc = synthesise(hosted, ["m1"])
    assert [e["operation_id"] for e in doc["endpoints"]] == ["chat.completions", "embeddings"]
    assert doc["models"][0]["owned_by"] == "hosted" and "sk-hosted" not in json.dumps(doc)


def test_absent_file_is_empty(tmp_path):
    loaded = load_file(tmp_path / "nope.toml", {})
    assert loaded.upstreams == {} and loaded.fallbacks == {}


@pytest.mark.parametrize(("text", "env", "message"), [
    ('[upstreams.a]\nbase_url = "http://x/v1"\n\n[fallbacks\n', {}, "not valid TOML: .*line 4"),
    ('[upstreams.a]\nbase_url = "http://x/v1"\ntimeout = -1\n', {}, r":3: upstreams\.a\.timeout: .*greater than 0"),
    ('[upstreams.a]\nbase_url = "ftp://x"\n', {}, r":2: upstreams\.a\.base_url: .*http"),
    ('\n[upstreams.a]\nbase_ur = "http://x/v1"\n', {}, r":3: upstreams\.a\.base_ur: Extra inputs"),
    ('\n\n[upstreams.a]\nmodels = ["m"]\n', {}, r":3: upstreams\.a\.base_url: Field required"),
    ('[upstreams.a]\nbase_url = "http://x/v1"\noperations = ["chat"]\n', {}, r":3: upstreams\.a\.operations"),
    ('[upstream.a]\nbase_url = "http://x/v1"\n', {}, r":1: upstream: Extra inputs"),
    ('[upstreams.a]\nbase_url = "http://x/v1"\napi_key_env = "K"\n', {}, r":1: upstreams\.a: api_key_env: \$K is not set"),
    ('[upstreams.a]\nbase_url = "http://x/v1"\napi_key_file = "missing"\n', {}, r"upstreams\.a: api_key_file .*missing"),
    ('[upstreams.a]\nbase_url = "http://x/v1"\napi_key_env = "K"\napi_key_file = "f"\n', {"K": "k"}, "give one"),
    ('[upstreams.a]\nbase_url = "http://x/v1"\napi_key_env = "K"\n', {"K": "k\u00e9y"}, "header cannot carry"),
    ('[fallbacks]\nx = ["a", "b"]\ny = ["b", "c"]\n', {}, r":3: fallbacks\.y: 'b' is followed by other models in fallbacks\.x"),
    ('[fallbacks]\nx = ["a"]\ny = ["x", "c"]\n', {}, r":3: fallbacks\.y: 'x' is a fallback list"),
    ('[fallbacks]\nx = []\n', {}, r":2: fallbacks\.x: a list of one or more"),
    ('[fallbacks]\nx = "a"\n', {}, r":2: fallbacks\.x: Input should be a valid list"),
    ('[upstreams.a]\nbase_url = "http://x/v1"\nmodels = ["m"]\n[fallbacks]\nm = ["n"]\n', {},
     r":5: fallbacks\.m: 'm' is already a model or an alias"),
])
def test_errors_name_the_line(tmp_path, text, env, message):
    path = tmp_path / "upstreams.toml"
    path.write_text(text)
    with pytest.raises(UpstreamsFileError, match=message) as err:
        load_file(path, env)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_a_model_may_end_several_lists(tmp_path):
    path = tmp_path / "upstreams.toml"
    path.write_text('[fallbacks]\nbig = ["a", "local"]\nsmall = ["b", "local"]\nboth = ["c", "b", "local"]\n')
    assert load_file(path, {}).fallbacks["small"] == ["b", "local"]


def test_fallback_chains():
    fb = Fallbacks({"big": ["qwen3-32b", "smollm2:135m", "tiny"]})
    assert fb.chain("big") == ["qwen3-32b", "smollm2:135m", "tiny"]
    assert fb.chain("qwen3-32b") == ["qwen3-32b", "smollm2:135m", "tiny"]
    assert fb.chain("smollm2:135m") == ["smollm2:135m", "tiny"]
    assert fb.chain("tiny") is None and fb.chain("other") is None  # nothing after it
    assert not Fallbacks({})


def test_usage_is_asked_for_only_on_streams_the_client_did_not_ask_it_for():
    body = json.dumps({"model": "m", "stream": True, "stream_options": {"x": 1}}).encode()
    sent, drop = ask_for_usage("chat.completions", body, True)
    assert drop and json.loads(sent)["stream_options"] == {"x": 1, "include_usage": True}
    asked = json.dumps({"model": "m", "stream": True, "stream_options": {"include_usage": True}}).encode()
    assert ask_for_usage("chat.completions", asked, True) == (asked, False)
    plain = b'{"model": "m", "stream": false}'
    assert ask_for_usage("completions", plain, False) == (plain, False)
    assert ask_for_usage("embeddings", body, True) == (body, False)
    sent, drop = ask_for_usage("chat.completions", b' {"model": "m", "stream": true}', True)
    assert drop and json.loads(sent) == {"model": "m", "stream": True, "stream_options": {"include_usage": True}}
    odd = b'{"model": "m", "stream": true, "stream_options": 3}'
    assert ask_for_usage("chat.completions", odd, True) == (odd, False)


def test_usage_chunk_dropped_wherever_the_stream_is_cut():
    content = b'data: {"choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n'
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}\n\n'
    done = b"data: [DONE]\n\n"
    stream = content + b": keep-alive\r\n\r\n" + content + usage + done
    for step in (1, 2, 5, 17, len(stream)):
        f = UsageChunkFilter()
        out = b"".join(f.feed(stream[i:i + step]) for i in range(0, len(stream), step)) + f.flush()
        assert out == content + b": keep-alive\r\n\r\n" + content + done, step
