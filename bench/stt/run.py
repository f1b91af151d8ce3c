"""STT benchmark: real-time factor of each backend alone, through the service and through the
gateway on the same 30 s clip, and the gateway's CPU for relaying a 10 MiB upload, in one run.

    python -m bench stt [--backends pocketsphinx,whisper] [--repeat 2] [--uploads 10]
                        [--whisper-model DIR] [--json out.json]

The clip is eSpeak NG reading English (30 s, 16 kHz WAV). "alone" is the backend called in this
process on the decoded samples (no HTTP, no decoding); "service" is `nexusd run stt` with a
multipart upload; "gateway" is `nexusd run gateway` in front of that service. Each is timed
best-of --repeat, alternating, since on a shared machine interference only ever adds time.
Ratios are throughput (audio seconds per wall second) over "alone" (goal >= 0.95).
The upload figure: CPU seconds of the gateway process per 10 MiB upload (random bytes, which
the service refuses with 400 once it has read them all, so no recognition runs), against the
CPU the stt service spends receiving the same upload, in the same run.
`whisper` runs the tiny random-weight model of fixtures/tiny_whisper.py unless
--whisper-model names a real one: with the tiny model its figures measure plumbing, not Whisper.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from bench.common import cpu_seconds, free_port  # noqa: E402
from nexusd.services.stt.audio import decode  # noqa: E402
from nexusd.services.stt.backends import Job, Progress, load_backend_class  # noqa: E402
from nexusd.services.stt.settings import STTSettings  # noqa: E402

TEXT = " ".join(f"This is sentence number {i}, read aloud for the speech recognizer." for i in range(1, 25))
CLIP_SECONDS = 30


def make_clip() -> bytes:
    from nexusd.services.tts.audio import AudioEncoder
    from nexusd.services.tts.backends.espeak import EspeakBackend
    from nexusd.services.tts.settings import TTSSettings

    backend = EspeakBackend(TTSSettings())
    backend.load()
    samples = np.concatenate(list(backend.synthesize(TEXT, "en-us", 1.0, threading.Event())))
    samples = samples[: CLIP_SECONDS * backend.sample_rate]
    encoder = AudioEncoder("wav", backend.sample_rate, streamed=False)
    encoder.encode(samples)
    return encoder.finish()


def multipart(fields: dict[str, str], file: bytes, filename: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
             "Content-Type: application/octet-stream\r\n\r\n".encode() + file + b"\r\n"]
    parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
              for k, v in fields.items()]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post(url: str, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=900) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Process:
    def __init__(self, service: str, env: dict[str, str], ready_path: str, port_var: str) -> None:
        self.port = free_port()
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}, **env,
               port_var: str(self.port), "NEXUS_ACCESS_LOG": "off", "NEXUS_LOG_FORMAT": "json"}
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "nexusd.cli", "run", service], env=env, cwd=REPO,
                                     stdout=self.log, stderr=self.log)
        self.url = f"http://127.0.0.1:{self.port}"
        ready = ready_path.format(port=self.port)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(ready, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                if self.proc.poll() is not None:
                    break
            time.sleep(0.2)
        self.log.seek(0)
        raise RuntimeError(f"{service} did not start: {self.log.read().decode()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def gateway_for(stt_url: str, tmp: Path) -> tuple[Process, str]:
    from nexusd.services.gateway.keys import new_key, write_keys

    plaintext, record = new_key("bench")
    write_keys(tmp / "api-keys", [record])
    obs = free_port()
    gw = Process("gateway", {"NEXUS_GATEWAY_KEYS_FILE": str(tmp / "api-keys"), "STT_BASE_URL": stt_url,
                             "NEXUS_GATEWAY_OBS_PORT": str(obs), "NEXUS_GATEWAY_POLL_INTERVAL": "0.2"},
                 f"http://127.0.0.1:{obs}/readyz", "NEXUS_GATEWAY_PORT")
    # Ready means discovery looked once; wait until the stt route is there.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{obs}/v1/metadata", timeout=5) as r:
            if "audio.transcriptions" in r.read().decode():
                break
        time.sleep(0.2)
    return gw, plaintext


def bench_backend(name: str, clip: bytes, repeat: int, tmp: Path, whisper_model: str | None) -> dict:
    env = {"NEXUS_STT_BACKEND": name}
    if name == "whisper":
        if whisper_model is None:
            from fixtures.tiny_whisper import build

            whisper_model = str(build(tmp / "tiny-whisper"))
        env.update(NEXUS_STT_MODEL=whisper_model, NEXUS_STT_WHISPER_VAD="off")
    settings = STTSettings(**{k.removeprefix("NEXUS_STT_").lower(): v for k, v in env.items()})
    backend = load_backend_class(name)(settings)
    backend.load()
    samples = decode(io.BytesIO(clip), "clip.wav", 600)
    job = Job("transcribe", "en", None, 0.0, False)

    def alone() -> float:
        start = time.perf_counter()
        list(backend.transcribe(samples, job, threading.Event(), Progress()))
        return time.perf_counter() - start

    service = Process("stt", env, "http://127.0.0.1:{port}/readyz", "NEXUS_STT_PORT")
    gw, key = gateway_for(service.url, tmp)
    body, ctype = multipart({"model": "whisper-1", "language": "en"}, clip, "clip.wav")

    def through(url: str, headers: dict[str, str] | None = None) -> float:
        start = time.perf_counter()
        status, data = post(url + "/v1/audio/transcriptions", body, ctype, headers)
        assert status == 200, data[:300]
        return time.perf_counter() - start

    auth = {"Authorization": f"Bearer {key}"}
    try:
        alone(), through(service.url), through(gw.url, auth)  # warm all three
        times: dict[str, list[float]] = {"alone": [], "service": [], "gateway": []}
        for _ in range(repeat):
            times["alone"].append(alone())
            times["service"].append(through(service.url))
            times["gateway"].append(through(gw.url, auth))
    finally:
        gw.stop()
        service.stop()
    best = {k: min(v) for k, v in times.items()}
    duration = samples.size / 16000
    return {"backend": name, "audio_seconds": round(duration, 2),
            "rtf": {k: round(v / duration, 4) for k, v in best.items()},
            "service_vs_alone": round(best["alone"] / best["service"], 3),
            "gateway_vs_alone": round(best["alone"] / best["gateway"], 3),
            "gateway_vs_service": round(best["service"] / best["gateway"], 3)}


def bench_upload(uploads: int, tmp: Path) -> dict:
    service = Process("stt", {"NEXUS_STT_BACKEND": "pocketsphinx"}, "http://127.0.0.1:{port}/readyz", "NEXUS_STT_PORT")
    gw, key = gateway_for(service.url, tmp)
    body, ctype = multipart({"model": "whisper-1"}, os.urandom(10 << 20), "noise.bin")
    auth = {"Authorization": f"Bearer {key}"}
    try:
        post(gw.url + "/v1/audio/transcriptions", body, ctype, auth)  # warm
        gw_cpu, stt_cpu = cpu_seconds(gw.proc.pid), cpu_seconds(service.proc.pid)
        start = time.perf_counter()
        for _ in range(uploads):
            status, data = post(gw.url + "/v1/audio/transcriptions", body, ctype, auth)
            assert status == 400 and b"invalid_audio" in data, data[:300]
        wall = time.perf_counter() - start
        gw_cpu = cpu_seconds(gw.proc.pid) - gw_cpu
        stt_cpu = cpu_seconds(service.proc.pid) - stt_cpu
    finally:
        gw.stop()
        service.stop()
    return {"uploads": uploads, "bytes": len(body),
            "gateway_cpu_ms_per_upload": round(gw_cpu / uploads * 1000, 1),
            "service_cpu_ms_per_upload": round(stt_cpu / uploads * 1000, 1),
            "gateway_over_service_cpu": round(gw_cpu / stt_cpu, 2) if stt_cpu else None,
            "wall_ms_per_upload": round(wall / uploads * 1000, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="pocketsphinx,whisper")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--uploads", type=int, default=10)
    parser.add_argument("--whisper-model", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-stt-"))
    clip = make_clip()
    results: dict = {"backends": [], "upload": None}
    for name in args.backends.split(","):
        r = bench_backend(name, clip, args.repeat, tmp, args.whisper_model)
        results["backends"].append(r)
        print(f"{name:13s} {r['audio_seconds']} s clip  rtf alone {r['rtf']['alone']:.3f}  service "
              f"{r['rtf']['service']:.3f}  gateway {r['rtf']['gateway']:.3f}  service/alone "
              f"{r['service_vs_alone']:.3f}  gateway/alone {r['gateway_vs_alone']:.3f}", flush=True)
    u = results["upload"] = bench_upload(args.uploads, tmp)
    print(f"10 MiB upload: gateway {u['gateway_cpu_ms_per_upload']} ms CPU, stt service receiving it "
          f"{u['service_cpu_ms_per_upload']} ms CPU ({u['gateway_over_service_cpu']}x), "
          f"{u['wall_ms_per_upload']} ms wall each", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
