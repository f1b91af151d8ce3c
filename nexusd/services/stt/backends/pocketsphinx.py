"""PocketSphinx: CMU's small recognizer, with the US-English acoustic model, dictionary and
language model that its PyPI wheel ships, so real speech is recognized offline on any machine.

English only and no translation. Audio is split into utterances where a voice activity
detector (PocketSphinx's Endpointer, WebRTC's VAD) hears a pause; each utterance is one
segment, decoded whole; a stop request takes effect at the next utterance (at most 10 s of audio).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np

from nexusd.runtime.settings import ConfigError
from nexusd.services.stt.backends import Backend, Job, Progress, Segment, Word

# Digital silence (exact zeros, as synthesizers and trimmed files have) makes log-energy
# features -inf and throws the decoder off: tested on eSpeak NG's digits, 3/10 words right
# without, 8/10 with. PocketSphinx's own `dither` draws from one generator for the life of the
# decoder, so the same audio would transcribe differently from one request to the next; this
# adds noise of the same size (a few LSB of 16-bit audio) from a fixed seed per request.
DITHER = 4 / 32768
PAUSE_WINDOW = 0.6  # seconds of the VAD window: a pause this long ends an utterance
MAX_UTTERANCE = 10.0  # seconds: longer speech is cut, so segments keep coming and a stop lands soon
FRAME_RATE = 100  # PocketSphinx's default frames per second (`frate`)


class PocketsphinxBackend(Backend):
    name = "pocketsphinx"
    translates = False

    def load(self) -> None:
        if self.settings.model:
            raise ConfigError("NEXUS_STT_MODEL: the pocketsphinx backend uses the model its wheel ships; "
                              "leave it empty")
        try:
            import pocketsphinx
        except ImportError:
            raise ConfigError("NEXUS_STT_BACKEND=pocketsphinx needs the pocketsphinx package: "
                              "pip install 'nexusd[stt]'") from None
        self._ps = pocketsphinx
        self._decoder = pocketsphinx.Decoder(loglevel="FATAL")

    def languages(self) -> list[str] | None:
        return ["en"]

    def describe(self) -> str:
        return "PocketSphinx, US English (model from the wheel)"

    def transcribe(self, samples: np.ndarray, job: Job, stop: threading.Event,
                   progress: Progress) -> Iterator[Segment]:
        # The front end carries its noise estimate and cepstral mean from one utterance to the
        # next: left alone, the same file transcribed differently (scores, now and then a word)
        # after other requests. Reset per request, so a transcript depends on its audio alone;
        # the utterances of one file still share them. (~0.1 ms)
        self._decoder.reinit_feat()
        noise = np.random.default_rng(0).normal(0.0, DITHER, samples.size).astype(np.float32)
        pcm = np.clip((samples + noise) * 32767.0, -32768, 32767).astype("<i2").tobytes()
        endpointer = self._ps.Endpointer(window=PAUSE_WINDOW, sample_rate=16000)
        frame_bytes = endpointer.frame_bytes
        speech_frames: list[bytes] = []
        start = 0.0
        for offset in range(0, len(pcm), frame_bytes):
            if stop.is_set():
                return
            frame = pcm[offset:offset + frame_bytes]
            last = offset + frame_bytes >= len(pcm)
            speech = endpointer.end_stream(frame) if last else endpointer.process(frame)
            progress.seconds = (offset + len(frame)) / 32000
            if speech is not None:
                if not speech_frames:
                    start = endpointer.speech_start
                speech_frames.append(speech)
            if speech_frames and (not endpointer.in_speech or last
                                  or progress.seconds - start >= MAX_UTTERANCE):
                segment = self._decode(b"".join(speech_frames), start, progress.seconds)
                speech_frames.clear()
                if segment is not None:
                    yield segment

    def _decode(self, pcm: bytes, start: float, end: float) -> Segment | None:
        # One call with full_utt: the cepstral mean is taken over the whole utterance. Fed
        # piecewise, the decoder starts from a generic mean that fits synthetic voices badly
        # (the first words came out wrong).
        decoder = self._decoder
        decoder.start_utt()
        decoder.process_raw(pcm, False, True)
        decoder.end_utt()
        return self._segment(start, end)

    def _segment(self, start: float, end: float) -> Segment | None:
        words = []
        for seg in self._decoder.seg() or ():  # None when nothing was recognized
            word = seg.word
            if word.startswith(("<", "[")):  # <s>, </s>, <sil>, [NOISE]: not words
                continue
            word = word.split("(", 1)[0]  # "to(2)": the dictionary's second pronunciation
            words.append(Word(word, round(start + seg.start_frame / FRAME_RATE, 2),
                              round(start + (seg.end_frame + 1) / FRAME_RATE, 2)))
        if not words:
            return None
        hyp = self._decoder.hyp()
        logprob = self._decoder.get_logmath().log(hyp.prob) if hyp is not None else 0.0
        return Segment(start=round(start, 2), end=round(max(end, words[-1].end), 2),
                       text=" ".join(w.word for w in words), words=words,
                       avg_logprob=round(logprob / max(len(words), 1), 4))
