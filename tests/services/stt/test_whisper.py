"""The whisper backend: faster-whisper's real code path (features, CTranslate2 encode and
generate, timestamp rules, word alignment, language detection, translation) on a tiny Whisper
whose weights are RANDOM (tiny_whisper.py), with a locally written tokenizer.json, so nothing
comes from a model hub. The words it produces are noise: only the answers' shapes are checked."""

from __future__ import annotations

import numpy as np
import openai
import pytest

from nexusd.runtime.settings import ConfigError
from nexusd.services.stt import STTService
from tests.runtime.support import serve_inprocess
from tests.services.stt.conftest import QUIET, client_for, wav

pytest.importorskip("faster_whisper")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from fixtures.tiny_whisper import build

    return build(tmp_path_factory.mktemp("tiny-whisper"))


@pytest.fixture
async def whisper(tiny_model):
    # VAD off: on random noise Silero would (rightly) find no speech and leave nothing to decode.
    async with serve_inprocess(STTService, QUIET, backend="whisper", model=str(tiny_model),
                               whisper_vad="off", whisper_beam_size=1) as server:
        yield server


def noise(seconds: float) -> bytes:
    return wav(np.random.default_rng(1).normal(0, 0.1, int(16000 * seconds)).astype(np.float32))


async def test_transcription_and_translation_with_a_random_weight_whisper(whisper):
    client = client_for(whisper.url)
    audio = ("noise.wav", noise(4))
    verbose = await client.audio.transcriptions.create(
        model="whisper-1", file=audio, response_format="verbose_json", language="de",
        timestamp_granularities=["word", "segment"], prompt="Guten Tag", temperature=0.2)
    assert verbose.language == "german" and abs(verbose.duration - 4) < 0.05
    for seg in verbose.segments or []:
        assert 0 <= seg.start <= seg.end <= verbose.duration
    for word in verbose.words or []:
        assert 0 <= word.start <= word.end <= verbose.duration
    assert isinstance(verbose.text, str)

    detected = await client.audio.transcriptions.create(model="whisper", file=audio, response_format="verbose_json")
    assert detected.language  # detected by the model (any of its 100 languages)

    translated = await client.audio.translations.create(model="whisper-1", file=audio, response_format="verbose_json")
    assert translated.task == "translate" and translated.language == "english"

    srt = await client.audio.translations.create(model="whisper-1", file=audio, response_format="srt")
    assert isinstance(srt, str)
    with pytest.raises(openai.BadRequestError, match="language 'xx'"):
        await client.audio.transcriptions.create(model="whisper-1", file=audio, language="xx")
    metadata = (await client.with_options().get("/metadata", cast_to=object))  # type: ignore[arg-type]
    model = metadata["models"][0]
    assert model["id"] == "whisper" and model["aliases"] == ["whisper-1"] and model["details"]["translates"]


async def test_a_directory_without_tokenizer_is_refused_at_start(tmp_path, tiny_model):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(tiny_model, copy)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(ConfigError, match="tokenizer.json"):
        async with serve_inprocess(STTService, QUIET, backend="whisper", model=str(copy)):
            pass
    with pytest.raises(ConfigError, match="not a directory"):
        async with serve_inprocess(STTService, QUIET, backend="whisper", model="small"):
            pass
