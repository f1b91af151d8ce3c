"""eSpeak NG through its C library with ctypes: real speech on any machine, no model files.

The library comes from the PyPI package `espeakng-loader` (a core dependency; it bundles
libespeak-ng and its data) or from Debian's `libespeak-ng1`. The calls used are the stable
`speak_lib.h` API: espeak_Initialize (synchronous output), espeak_SetSynthCallback,
espeak_SetVoiceByName, espeak_SetParameter(espeakRATE) and espeak_Synth.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Iterator

import numpy as np

from nexusd.runtime.settings import ConfigError
from nexusd.services.tts.backends import Backend

AUDIO_OUTPUT_SYNCHRONOUS = 2
POS_CHARACTER = 1
ESPEAK_CHARS_UTF8 = 1
ESPEAK_RATE = 1
DEFAULT_RATE = 175  # words per minute: eSpeak's own default, taken as speed 1.0
MIN_RATE, MAX_RATE = 80, 700  # 80 is espeakRATE_MINIMUM; above 450 the sonic speed-up applies

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Voice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),  # priority byte + name, repeated, then a 0 byte
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


def find_library(path: str) -> tuple[str, str | None]:
    """(library, data parent dir or None for the library's default)."""
    if path:
        return path, None
    try:
        import espeakng_loader

        return espeakng_loader.get_library_path(), os.path.dirname(espeakng_loader.get_data_path())
    except (ImportError, RuntimeError):
        found = ctypes.util.find_library("espeak-ng")
        if not found:
            raise ConfigError("NEXUS_TTS_ESPEAK_LIBRARY: libespeak-ng not found; install the PyPI "
                              "package espeakng-loader or Debian's libespeak-ng1") from None
        return found, None


class EspeakBackend(Backend):
    name = "espeak"
    speed_range = (MIN_RATE / DEFAULT_RATE, MAX_RATE / DEFAULT_RATE)
    # OpenAI's voices as eSpeak language + variant ("+f3": a female variant); see
    # espeak-ng-data/voices/!v for the variants.
    default_voice_map = {
        "alloy": "en-us+f3", "ash": "en-us+m3", "ballad": "en-gb+m2", "coral": "en-us+f2",
        "echo": "en-us+m1", "fable": "en-gb+f3", "onyx": "en-us+m7", "nova": "en-us+f4",
        "sage": "en-gb+f2", "shimmer": "en-us+f1", "verse": "en-us+m4", "marin": "en-us+f5",
        "cedar": "en-us+m2",
    }

    def load(self) -> None:
        library, data_dir = find_library(self.settings.espeak_library)
        data_dir = self.settings.espeak_data or data_dir
        try:
            lib = ctypes.CDLL(library)
        except OSError as exc:
            raise ConfigError(f"NEXUS_TTS_ESPEAK_LIBRARY: cannot load {library}: {exc}") from None
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        # buflength 100 ms: the callback gets audio in pieces of that size.
        rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 100,
                                     data_dir.encode() if data_dir else None, 0)
        if rate <= 0:
            raise ConfigError(f"NEXUS_TTS_ESPEAK_DATA: eSpeak NG failed to initialize (data in {data_dir})")
        self.sample_rate = rate
        self._lib = lib
        self._chunks: list[np.ndarray] = []
        self._stop = threading.Event()
        self._callback = _CALLBACK(self._on_audio)  # kept referenced: the C side holds it
        lib.espeak_SetSynthCallback(self._callback)
        self._languages, self._ids = self._list_voices()
        variants_dir = os.path.join(data_dir or "", "espeak-ng-data", "voices", "!v")
        self._variants = sorted(os.listdir(variants_dir)) if os.path.isdir(variants_dir) else []
        # The first synthesis after espeak_Initialize comes out unlike every later one (measured
        # through PocketSphinx: 2 of 10 spoken digits recognized, then 6-7 of 10, every time):
        # one discarded synthesis at load, so no client gets that one.
        for _ in self.synthesize("Ready.", "en", 1.0, threading.Event()):
            pass

    def _list_voices(self) -> tuple[dict[str, str], dict[str, str]]:
        """({language: display name}, {lower-case language or identifier: identifier}).
        espeak_SetVoiceByName wants the voice file's identifier ("gmw/en" for en-gb)."""
        entries = self._lib.espeak_ListVoices(None)
        languages: dict[str, str] = {}
        ids: dict[str, str] = {}
        i = 0
        while entries[i]:
            voice = entries[i].contents
            # languages: a priority byte, then the NUL-terminated language name (ctypes stops
            # the bytes at that NUL).
            lang = voice.languages[1:].decode()
            ident = voice.identifier.decode()
            languages[lang] = voice.name.decode()
            ids[lang.lower()] = ident
            ids[ident.lower()] = ident
            ids.setdefault(ident.rsplit("/", 1)[-1].lower(), ident)  # "fr" for roa/fr, as espeak-ng -v fr
            i += 1
        return languages, ids

    def voices(self) -> list[str]:
        return list(self._languages)

    def has_voice(self, voice: str) -> bool:
        base, _, variant = voice.partition("+")
        return base.lower() in self._ids and (not variant or variant in self._variants)

    def _engine_name(self, voice: str) -> str:
        base, sep, variant = voice.partition("+")
        return self._ids[base.lower()] + sep + variant

    def describe(self) -> str:
        return f"eSpeak NG, {len(self._languages)} languages, {self.sample_rate} Hz"

    def voice_names(self) -> dict[str, str]:
        return dict(self._languages)

    def variants(self) -> list[str]:
        return list(self._variants)

    def _on_audio(self, wav: ctypes._Pointer, count: int, events: int) -> int:
        if wav and count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).astype(np.float32) / 32768.0)
        return 1 if self._stop.is_set() else 0  # 1 asks eSpeak to abort the synthesis

    def synthesize(self, text: str, voice: str, speed: float,
                   stop: threading.Event) -> Iterator[np.ndarray]:
        lib = self._lib
        if lib.espeak_SetVoiceByName(self._engine_name(voice).encode()) != 0:
            raise ValueError(f"eSpeak NG rejected voice {voice!r}")
        rate = int(round(min(max(DEFAULT_RATE * speed, MIN_RATE), MAX_RATE)))
        lib.espeak_SetParameter(ESPEAK_RATE, rate, 0)
        self._chunks = []
        self._stop = stop
        data = text.encode()
        lib.espeak_Synth(data, len(data) + 1, 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None)
        if self._chunks and not stop.is_set():
            yield np.concatenate(self._chunks)
        self._chunks = []
