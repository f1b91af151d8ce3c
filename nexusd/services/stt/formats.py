"""OpenAI's five response formats and the streamed events, from recognized segments."""

from __future__ import annotations

import json
import math
from typing import Any

from nexusd.services.stt.backends import Segment

CONTENT_TYPES = {"json": "application/json", "verbose_json": "application/json",
                 "text": "text/plain; charset=utf-8", "srt": "application/x-subrip; charset=utf-8",
                 "vtt": "text/vtt; charset=utf-8"}

# Whisper's languages by code; verbose_json names the language as OpenAI does ("english").
_NAMES = (
    "en english zh chinese de german es spanish ru russian ko korean fr french ja japanese pt portuguese "
    "tr turkish pl polish ca catalan nl dutch ar arabic sv swedish it italian id indonesian hi hindi "
    "fi finnish vi vietnamese he hebrew uk ukrainian el greek ms malay cs czech ro romanian da danish "
    "hu hungarian ta tamil no norwegian th thai ur urdu hr croatian bg bulgarian lt lithuanian la latin "
    "mi maori ml malayalam cy welsh sk slovak te telugu fa persian lv latvian bn bengali sr serbian "
    "az azerbaijani sl slovenian kn kannada et estonian mk macedonian br breton eu basque is icelandic "
    "hy armenian ne nepali mn mongolian bs bosnian kk kazakh sq albanian sw swahili gl galician "
    "mr marathi pa punjabi si sinhala km khmer sn shona yo yoruba so somali af afrikaans oc occitan "
    "ka georgian be belarusian tg tajik sd sindhi gu gujarati am amharic yi yiddish lo lao uz uzbek "
    "fo faroese ht haitian_creole ps pashto tk turkmen nn nynorsk mt maltese sa sanskrit lb luxembourgish "
    "my myanmar bo tibetan tl tagalog mg malagasy as assamese tt tatar haw hawaiian ln lingala ha hausa "
    "ba bashkir jw javanese su sundanese yue cantonese"
).split()
LANGUAGE_NAMES = {code: name.replace("_", " ") for code, name in zip(_NAMES[::2], _NAMES[1::2], strict=True)}


def full_text(segments: list[Segment]) -> str:
    return " ".join(s.text.strip() for s in segments if s.text.strip())


def usage(seconds: float) -> dict[str, Any]:
    # whisper-1's usage: billed by the second of audio, rounded up.
    return {"type": "duration", "seconds": math.ceil(seconds)}


def _timestamp(seconds: float, sep: str) -> str:
    ms = int(round(max(seconds, 0.0) * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def srt(segments: list[Segment]) -> str:
    cues = [f"{i}\n{_timestamp(s.start, ',')} --> {_timestamp(s.end, ',')}\n{s.text.strip()}\n"
            for i, s in enumerate((s for s in segments if s.text.strip()), 1)]
    return "\n".join(cues)


def vtt(segments: list[Segment]) -> str:
    cues = [f"{_timestamp(s.start, '.')} --> {_timestamp(s.end, '.')}\n{s.text.strip()}\n"
            for s in segments if s.text.strip()]
    return "WEBVTT\n\n" + "\n".join(cues)


def verbose(segments: list[Segment], *, task: str, language: str, duration: float,
            granularities: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {"task": task, "language": LANGUAGE_NAMES.get(language, language),
                            "duration": round(duration, 3), "text": full_text(segments)}
    if not granularities or "segment" in granularities:
        body["segments"] = [
            {"id": i, "seek": int(s.start * 100), "start": s.start, "end": s.end, "text": s.text,
             "tokens": s.tokens, "temperature": s.temperature, "avg_logprob": s.avg_logprob,
             "compression_ratio": s.compression_ratio, "no_speech_prob": s.no_speech_prob}
            for i, s in enumerate(segments)]
    if "word" in granularities:
        body["words"] = [{"word": w.word.strip(), "start": w.start, "end": w.end}
                         for s in segments for w in s.words]
    body["usage"] = usage(duration)
    return body


def render(fmt: str, segments: list[Segment], **verbose_args: Any) -> str:
    if fmt == "text":
        return full_text(segments) + "\n"
    if fmt == "srt":
        return srt(segments)
    if fmt == "vtt":
        return vtt(segments)
    if fmt == "verbose_json":
        return json.dumps(verbose(segments, **verbose_args), ensure_ascii=False)
    return json.dumps({"text": full_text(segments), "usage": usage(verbose_args["duration"])}, ensure_ascii=False)

