"""TTS benchmark: real-time factor per backend and format, time to first audio byte streamed vs
whole, and the service against the backend called directly, all in one run.

    .venv/bin/python bench/tts/run.py [--backends espeak,piper,pocket] [--formats mp3,wav,...]
                                      [--repeat 3] [--json out.json]

For each backend a real `nexusd run tts` subprocess serves on a free port; this process loads
the same backend and encoder and runs the same work directly (sentence split, synthesis,
encoding, no HTTP), alternating with the service so both see the same machine load. Figures:
- rtf: synthesis wall time / audio duration (below 1 = faster than real time), for the backend
  alone (no encoding), direct (backend + encoder) and through the service (HTTP, worker thread);
- service/direct: audio seconds per wall second through the service over direct (goal >= 0.95),
  on a long text for espeak (its work per request is otherwise too small to time) and on a
  paragraph for the slower engines; best of --repeat runs on both sides, since on a shared
  machine interference only ever adds time;
- ttfb: time to the first audio byte for a long text, streamed (stream_format=audio) vs whole.
`pocket` runs the tiny random-weight model from fixtures/tiny_pocket.py unless
--pocket-config names real weights: with the tiny model its figures measure plumbing, not Pocket.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.common import free_port  # noqa: E402
from nexusd.services.tts.audio import AudioEncoder  # noqa: E402
from nexusd.services.tts.backends import load_backend_class  # noqa: E402
from nexusd.services.tts.sentences import split_sentences  # noqa: E402
from nexusd.services.tts.settings import TTSSettings  # noqa: E402

MEDIUM = ("The quick brown fox jumps over the lazy dog. It was a bright, cold day in April, and the clocks "
          "were striking thirteen. Nobody expected the meeting to run this long. Still, the plan held: "
          "finish the draft, send it out, and wait for answers. By evening the rain had stopped.")
LONG = " ".join(f"This is sentence number {i} of a long text, read aloud one piece at a time." for i in range(1, 31))


def audio_seconds(data: bytes, fmt: str) -> float:
    if fmt == "pcm":
        return len(data) / 2 / 24000
    import io

    import av

    with av.open(io.BytesIO(data)) as container:
        frames = list(container.decode(audio=0))
    return sum(f.samples for f in frames) / frames[0].sample_rate


def post(port: int, body: dict) -> tuple[float, float, bytes]:
    """(seconds to first body byte, seconds to the end, body) for one speech request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    conn.request("POST", "/v1/audio/speech", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()[:300]
    first = resp.read(1)
    ttfb = time.perf_counter() - start
    data = first + resp.read()
    total = time.perf_counter() - start
    conn.close()
    return ttfb, total, data


class Service:
    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}, **env,
               "NEXUS_TTS_PORT": str(self.port), "NEXUS_ACCESS_LOG": "off", "NEXUS_LOG_FORMAT": "json"}
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "nexusd.cli", "run", "tts"], env=env, cwd=REPO,
                                     stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                if self.proc.poll() is not None:
                    break
            time.sleep(0.2)
        self.log.seek(0)
        raise RuntimeError(f"tts service did not start: {self.log.read().decode()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


class Direct:
    """The same work as the service, called in this process: split, synthesize, encode."""

    def __init__(self, settings: TTSSettings) -> None:
        self.backend = load_backend_class(settings.backend)(settings)
        self.backend.load()
        self.voice = self.backend.voices()[0] if settings.backend != "espeak" else "en-us+f3"

    def run(self, text: str, fmt: str | None) -> tuple[float, float]:
        """(wall seconds, audio seconds); fmt None = backend only, no encoder."""
        stop = threading.Event()
        encoder = AudioEncoder(fmt, self.backend.sample_rate, streamed=False) if fmt else None
        start = time.perf_counter()
        samples = 0
        for sentence in split_sentences(text):
            for chunk in self.backend.synthesize(sentence, self.voice, 1.0, stop):
                samples += chunk.size
                if encoder:
                    encoder.encode(chunk)
        if encoder:
            encoder.finish()
        return time.perf_counter() - start, samples / self.backend.sample_rate


def bench_backend(name: str, formats: list[str], repeat: int, pocket_config: str | None) -> dict:
    env = {"NEXUS_TTS_BACKEND": name}
    settings_kw: dict = {"backend": name}
    if name == "pocket":
        if pocket_config:
            env["NEXUS_TTS_POCKET_CONFIG"] = pocket_config
        else:
            from fixtures.tiny_pocket import build

            config = build(Path(tempfile.mkdtemp(prefix="bench-pocket-")))
            env.update(NEXUS_TTS_POCKET_CONFIG=str(config), NEXUS_TTS_POCKET_VOICES=str(config.parent / "voices"),
                       NEXUS_TTS_POCKET_MAX_SECONDS="3")
        settings_kw.update({k.removeprefix("NEXUS_TTS_").lower(): v for k, v in env.items() if k != "NEXUS_TTS_BACKEND"})
    direct = Direct(TTSSettings(**settings_kw))
    service = Service(env)
    voice = direct.voice
    result: dict = {"backend": name, "formats": {}}
    try:
        direct.run(MEDIUM, "mp3")  # warm both
        post(service.port, {"input": MEDIUM, "voice": voice, "response_format": "mp3"})
        text = LONG if name == "espeak" else MEDIUM
        result["text_chars"] = len(text)
        alone = [direct.run(text, None) for _ in range(repeat)]
        result["rtf_backend_only"] = min(w / a for w, a in alone)
        for fmt in formats:
            d_rtf, s_rtf = [], []
            for _ in range(repeat):
                wall, audio = direct.run(text, fmt)
                d_rtf.append(wall / audio)
                _, total, data = post(service.port, {"input": text, "voice": voice, "response_format": fmt})
                s_rtf.append(total / audio_seconds(data, fmt))  # measured: pocket samples, lengths vary
            result["formats"][fmt] = {
                "rtf_direct": min(d_rtf), "rtf_service": min(s_rtf),
                # audio per wall second, service over direct = inverse ratio of the RTFs
                "service_over_direct": min(d_rtf) / min(s_rtf),
            }
        streamed, whole = [], []
        for _ in range(repeat):
            streamed.append(post(service.port, {"input": LONG, "voice": voice, "response_format": "mp3",
                                                "stream_format": "audio"})[0])
            whole.append(post(service.port, {"input": LONG, "voice": voice, "response_format": "mp3"})[0])
        result["ttfb_streamed_s"] = statistics.median(streamed)
        result["ttfb_whole_s"] = statistics.median(whole)
    finally:
        service.stop()
    return result


def main() -> None:
    import logging

    logging.basicConfig(level=logging.ERROR)  # pocket-tts logs every chunk at INFO/WARNING
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="espeak,piper,pocket")
    parser.add_argument("--formats", default="mp3,opus,aac,flac,wav,pcm")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--pocket-config", default=None, help="a pocket config with real local weights")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    formats = args.formats.split(",")
    results = []
    for name in args.backends.split(","):
        try:
            results.append(bench_backend(name, formats, args.repeat, args.pocket_config))
        except Exception as exc:  # an extra that is not installed: say so, go on
            print(f"{name}: skipped ({exc})", file=sys.stderr)
            continue
        r = results[-1]
        print(f"\n== {name} ({r['text_chars']} chars): backend alone RTF {r['rtf_backend_only']:.4f}; TTFB long text (30 sentences, mp3): "
              f"streamed {r['ttfb_streamed_s'] * 1000:.0f} ms, whole {r['ttfb_whole_s'] * 1000:.0f} ms")
        print(f"{'format':<7}{'RTF direct':>12}{'RTF service':>13}{'service/direct':>16}")
        for fmt, f in r["formats"].items():
            print(f"{fmt:<7}{f['rtf_direct']:>12.4f}{f['rtf_service']:>13.4f}{f['service_over_direct']:>16.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
