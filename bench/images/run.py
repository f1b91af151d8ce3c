"""Images benchmark: the service (`nexusd run images`, diffusers backend, over HTTP) vs the same
pipeline called directly in this process, same steps, size, guidance and seed, in one run; and
the stub backend's images per second.

    .venv/bin/python bench/images/run.py [--model DIR | --build tiny|sd15] [--steps 2] [--size 64x64]
                                         [--rounds 5] [--stub-requests 50] [--json out.json]

Without --model a pipeline with random weights is built from configs (fixtures/tiny_pipeline.py):
`tiny` (CPU-sized, the default) or `sd15` (Stable Diffusion 1.5's
architecture, for a GPU). Rounds alternate direct / service so that other load on the machine
hits both alike; medians of seconds per image are reported with the ratio direct/service
(throughput of the service relative to the direct call; goal >= 0.97). The direct side is
timed twice: the pipeline alone, and the pipeline plus PNG encoding (the bytes the service
returns). CUDA when present (fp16), as the service does; NEXUS_GPU_MEMORY passes through.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # also runnable as a plain script
from bench.common import free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
PROMPT = "a watercolour painting of a lighthouse on a cliff at dusk"


def post(url: str, body: dict, timeout: float = 600) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def get(url: str, timeout: float = 5) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except OSError:
        return 0, {}


class ServiceProcess:
    def __init__(self, env: dict[str, str], log_path: Path, ready_timeout: float = 900) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_IMAGES_")}
        full.update({"NEXUS_IMAGES_PORT": str(self.port), "NEXUS_LOG_FORMAT": "json",
                     "NEXUS_ACCESS_LOG": "off", **env})
        self.log = open(log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "nexusd.cli", "run", "images"], cwd=REPO,
                                     env=full, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + ready_timeout
        while get(self.url + "/readyz")[0] != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"images service did not become ready; log:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)
        self.log.close()


def direct_pipeline(model: str):
    import torch
    from diffusers import AutoPipelineForText2Image

    from nexusd.services.images.backends.diffusers import _dtype_kwarg

    cuda = torch.cuda.is_available()
    dtype = torch.float16 if cuda else torch.float32
    pipe = AutoPipelineForText2Image.from_pretrained(model, local_files_only=True, **_dtype_kwarg(dtype))
    pipe = pipe.to("cuda" if cuda else "cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe, torch


def bench_diffusers(args: argparse.Namespace, model: str, workdir: Path, inspect=None) -> dict:
    """`inspect(service_process)`, if given, runs after the rounds while the service still runs."""
    width, height = (int(v) for v in args.size.split("x"))
    pipe, torch = direct_pipeline(model)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def direct(seed: int, encode: bool) -> float:
        start = time.perf_counter()
        gen = [torch.Generator(device).manual_seed(seed)]
        out = pipe(prompt=PROMPT, width=width, height=height, num_inference_steps=args.steps,
                   guidance_scale=args.guidance, generator=gen, output_type="pil")
        if encode:
            buf = io.BytesIO()
            out.images[0].save(buf, "PNG")
            base64.b64encode(buf.getvalue())
        return time.perf_counter() - start

    env = {"NEXUS_IMAGES_BACKEND": "diffusers", "NEXUS_IMAGES_MODEL": model,
           "NEXUS_IMAGES_MAX_STEPS": str(max(500, args.steps)), "NEXUS_IMAGES_MIN_SIDE": "8",
           "NEXUS_IMAGES_CACHE_DIR": str(workdir / "cache")}
    svc = ServiceProcess(env, workdir / "service.log")
    body = {"prompt": PROMPT, "size": args.size, "steps": args.steps, "guidance_scale": args.guidance,
            "response_format": "b64_json"}
    try:
        meta = get(svc.url + "/v1/metadata")[1]["models"][0]["details"]

        def service(seed: int) -> float:
            start = time.perf_counter()
            res = post(svc.url + "/v1/images/generations", {**body, "seed": seed})
            assert len(res["data"]) == 1
            return time.perf_counter() - start

        direct(0, True)  # warm-up both sides alike (the service did one step at start)
        service(0)
        rows: dict[str, list[float]] = {"direct": [], "direct_png": [], "service": []}
        for r in range(args.rounds):
            rows["direct"].append(direct(r + 1, False))
            rows["direct_png"].append(direct(r + 1, True))
            rows["service"].append(service(r + 1))
        inspected = inspect(svc) if inspect else None
    finally:
        svc.stop()
    med = {k: statistics.median(v) for k, v in rows.items()}
    return {
        "device": device, "service_details": meta, "size": args.size, "steps": args.steps,
        "rounds": args.rounds, "seconds_per_image": {k: round(v, 4) for k, v in med.items()},
        "ratio_vs_direct": round(med["direct"] / med["service"], 4),
        "ratio_vs_direct_png": round(med["direct_png"] / med["service"], 4),
        "all": {k: [round(x, 4) for x in v] for k, v in rows.items()},
        **({"inspected": inspected} if inspected is not None else {}),
    }


def bench_stub(args: argparse.Namespace, workdir: Path) -> dict:
    from nexusd.services.images.service import encode

    from nexusd.services.images.backends import Job
    from nexusd.services.images.backends.stub import StubBackend
    from nexusd.services.images.settings import ImagesSettings

    backend = StubBackend(ImagesSettings(), lambda text: None)
    backend.load()
    n = args.stub_requests
    start = time.perf_counter()
    for i in range(n):
        encode(backend.generate(Job(f"{PROMPT} {i}", 512, 512, 1, i, 1, 0.0))[0], "png", None)
    direct = n / (time.perf_counter() - start)
    svc = ServiceProcess({"NEXUS_IMAGES_CACHE_DIR": str(workdir / "stub-cache")}, workdir / "stub.log")
    try:
        body = {"size": "512x512", "response_format": "b64_json"}
        post(svc.url + "/v1/images/generations", {**body, "prompt": "warm-up"})
        start = time.perf_counter()
        for i in range(n):
            post(svc.url + "/v1/images/generations", {**body, "prompt": f"{PROMPT} {i}"})
        service = n / (time.perf_counter() - start)
    finally:
        svc.stop()
    return {"size": "512x512", "requests": n, "images_per_second": {"service": round(service, 2),
                                                                   "direct": round(direct, 2)}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="an existing pipeline folder (default: build one)")
    ap.add_argument("--build", choices=["tiny", "sd15"], default="tiny")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--size", default="64x64")
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--stub-requests", type=int, default=50)
    ap.add_argument("--skip-stub", action="store_true")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-images-") as tmp:
        workdir = Path(tmp)
        results: dict = {}
        if not args.skip_stub:
            results["stub"] = bench_stub(args, workdir)
            print(json.dumps({"stub": results["stub"]}), flush=True)
        model = args.model
        if model is None:
            import torch

            from fixtures.tiny_pipeline import build_tiny_pipeline

            dtype = torch.float16 if args.build == "sd15" and torch.cuda.is_available() else None
            started = time.perf_counter()
            model = str(build_tiny_pipeline(workdir / f"pipeline-{args.build}", args.build, dtype=dtype,
                                            device="cuda" if dtype is not None else None))
            results["build_seconds"] = round(time.perf_counter() - started, 2)
        results["diffusers"] = bench_diffusers(args, model, workdir)
        print(json.dumps({"diffusers": results["diffusers"]}, indent=2), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
