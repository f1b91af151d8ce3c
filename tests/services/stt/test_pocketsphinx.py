"""The pocketsphinx backend through the real openai client, on speech made by the real tts
service (eSpeak NG)."""

from __future__ import annotations

from tests.services.stt.conftest import client_for


async def test_the_same_audio_gives_the_same_transcript_whatever_came_before(pocketsphinx, espeak):
    """PocketSphinx's front end keeps its noise estimate and cepstral mean from one utterance to
    the next, so a file's transcript (scores, and now and then a word) depended on the requests
    before it. The backend starts every request from the front end's initial state."""
    tts, stt = client_for(espeak.url), client_for(pocketsphinx.url)
    digits = (await tts.audio.speech.create(model="tts-1", voice="coral", input="One two three four five.",
                                            response_format="wav")).content
    other = (await tts.audio.speech.create(model="tts-1", voice="onyx", response_format="wav",
                                           input="The quick brown fox jumps over the lazy dog.")).content

    async def verbose(audio: bytes) -> dict:
        result = await stt.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", audio), response_format="verbose_json",
            timestamp_granularities=["segment", "word"])
        return result.model_dump()

    first = await verbose(digits)
    assert first["segments"] and first["words"]
    await verbose(other)
    assert await verbose(digits) == first
    assert await verbose(digits) == first
