"""The images service on CUDA, in one go (run by bench/images/gpu_check.sh on a GPU machine):

 1. the runtime's GPU cap (`apply_gpu_memory_limit`) in a fresh process: an allocation within
    the cap works, one beyond it raises torch.OutOfMemoryError;
 2. a random-weight pipeline with Stable Diffusion 1.5's architecture, saved in fp16;
 3. the service with NEXUS_GPU_MEMORY below the model's size: the load must fail with OOM
    (the cap is honoured inside the service), /readyz stays 503 and says so;
 4. the service with a sufficient cap: metadata says cuda + float16; the benchmark (service vs
    direct pipeline, same steps and size); the service process's GPU memory per nvidia-smi;
    a request whose client goes away stops early.

Without CUDA it runs the same steps on the tiny pipeline (a dry run of the script itself).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as images_bench  # noqa: E402  (bench/images/run.py)

CAP_PROBE = r"""
import json, torch
from nexusd.runtime.gpu import apply_gpu_memory_limit
fraction = apply_gpu_memory_limit("2Gi")
small = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")  # 1 GiB: within the cap
try:
    big = torch.empty(3 << 30, dtype=torch.uint8, device="cuda")  # 3 GiB: beyond it
    refused = False
except torch.OutOfMemoryError as exc:
    refused = True
print(json.dumps({"fraction": fraction, "within_cap_ok": True, "beyond_cap_refused": refused,
                  "max_memory_allocated": torch.cuda.max_memory_allocated()}))
"""


def log(title: str, value: object) -> None:
    print(f"== {title}: {json.dumps(value, default=str)}", flush=True)


def nvidia_smi_used(pid: int) -> int | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid):
            return int(parts[1])  # MiB
    return None


def cancel_check(svc: images_bench.ServiceProcess, size: str) -> dict:
    """Send a long job, drop the connection once it is stepping, then time a short job."""
    host, port = "127.0.0.1", svc.port
    body = json.dumps({"prompt": "long", "size": size, "steps": 500, "response_format": "b64_json"}).encode()
    sock = socket.create_connection((host, port))
    sock.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "nexus_images_running_jobs 1.0" not in metrics(svc):
        time.sleep(0.05)
    time.sleep(1.0)  # let it step for a second
    sock.close()
    start = time.monotonic()
    deadline = start + 60
    while time.monotonic() < deadline and "nexus_images_cancelled_total 1.0" not in metrics(svc):
        time.sleep(0.05)
    stopped_after = time.monotonic() - start
    text = metrics(svc)
    steps = next((line for line in text.splitlines() if line.startswith("nexus_images_seconds_per_step_count")), "")
    return {"cancelled": "nexus_images_cancelled_total 1.0" in text, "seconds_to_stop": round(stopped_after, 3),
            "steps_observed_total": steps}


def metrics(svc: images_bench.ServiceProcess) -> str:
    import urllib.request

    with urllib.request.urlopen(svc.url + "/metrics", timeout=10) as r:
        return r.read().decode()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=tempfile.mkdtemp(prefix="gpu-check-"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cap", default="8Gi", help="NEXUS_GPU_MEMORY for the benchmark's service")
    args = ap.parse_args()
    import torch

    cuda = torch.cuda.is_available()
    import diffusers

    log("environment", {"torch": torch.__version__, "cuda": cuda, "diffusers": diffusers.__version__,
                        "device": torch.cuda.get_device_name(0) if cuda else "cpu"})
    results: dict = {"cuda": cuda}
    if cuda:
        probe = subprocess.run([sys.executable, "-c", CAP_PROBE], capture_output=True, text=True, cwd=REPO)
        results["cap_probe"] = json.loads(probe.stdout.strip().splitlines()[-1]) if probe.returncode == 0 else probe.stderr[-2000:]
        log("1. runtime cap probe (2Gi)", results["cap_probe"])

    from fixtures.tiny_pipeline import build_tiny_pipeline

    work = Path(tempfile.mkdtemp(prefix="gpu-check-work-"))
    size = "sd15" if cuda else "tiny"
    started = time.perf_counter()
    model = build_tiny_pipeline(work / size, size, dtype=torch.float16 if cuda else None,
                               device="cuda" if cuda else None)
    results["build"] = {"size": size, "seconds": round(time.perf_counter() - started, 1)}
    log("2. built random-weight pipeline", results["build"])

    # 3. A cap below the model's size: the service must fail its load with an OOM.
    env = {"NEXUS_IMAGES_BACKEND": "diffusers", "NEXUS_IMAGES_MODEL": str(model),
           "NEXUS_IMAGES_CACHE_DIR": str(work / "cache"), "NEXUS_GPU_MEMORY": "1Gi"}
    if cuda:
        port = images_bench.free_port()
        full = {**os.environ, **env, "NEXUS_IMAGES_PORT": str(port), "NEXUS_LOG_FORMAT": "json"}
        with open(work / "oom.log", "wb") as errlog:
            proc = subprocess.Popen([sys.executable, "-m", "nexusd.cli", "run", "images"], cwd=REPO, env=full,
                                    stdout=errlog, stderr=errlog)
        deadline = time.monotonic() + 180
        body: dict = {}
        while time.monotonic() < deadline:
            status, body = images_bench.get(f"http://127.0.0.1:{port}/readyz")
            if "load failed" in json.dumps(body) or status == 200 or proc.poll() is not None:
                break
            time.sleep(0.5)
        proc.terminate()
        proc.wait(60)
        results["small_cap"] = {"readyz_status": status, "model_check": body.get("checks", {}).get("model")}
        log("3. service under NEXUS_GPU_MEMORY=1Gi", results["small_cap"])

    # 4. The benchmark with a sufficient cap, plus nvidia-smi and the cancel check.
    os.environ["NEXUS_GPU_MEMORY"] = args.cap if cuda else ""

    def inspect(svc: images_bench.ServiceProcess) -> dict:
        found = {"service_gpu_mib_nvidia_smi": nvidia_smi_used(svc.proc.pid) if cuda else None,
                 "cap": args.cap if cuda else None}
        found["cancel"] = cancel_check(svc, bench_args.size)
        return found

    bench_args = argparse.Namespace(steps=args.steps if cuda else 2, size="512x512" if cuda else "64x64",
                                    guidance=7.5, rounds=args.rounds)
    results["bench"] = images_bench.bench_diffusers(bench_args, str(model), work, inspect=inspect)
    log("4. bench (service vs direct)", results["bench"])
    Path(args.out, "gpu_check.json").write_text(json.dumps(results, indent=2))
    for name in ("service.log", "oom.log"):
        if (work / name).exists():
            Path(args.out, name).write_bytes((work / name).read_bytes()[-200_000:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
