"""`apply_gpu_memory_limit`: a no-op without a limit, without torch loaded, or without CUDA; with
CUDA (only on a GPU machine) it sets torch's per-process fraction to limit / device memory."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nexusd.runtime.gpu import apply_gpu_memory_limit

# In a child process: whether torch is imported is process-wide state.
PROBE = """
import sys
from nexusd.runtime.gpu import apply_gpu_memory_limit
print(apply_gpu_memory_limit("{limit}"), "torch" in sys.modules)
"""


def probe(limit: str) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE.format(limit=limit)],
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip()


def test_no_limit_is_a_no_op():
    assert apply_gpu_memory_limit(None) is None and apply_gpu_memory_limit("") is None


def test_does_not_import_torch_itself():
    assert probe("1Gi") == "None False"


def test_with_torch_loaded_applies_only_with_cuda():
    torch = pytest.importorskip("torch")
    code = "import torch; f = apply_gpu_memory_limit('1Gi'); print(f, torch.cuda.is_available())"
    out = subprocess.run([sys.executable, "-c", "from nexusd.runtime.gpu import *\n" + code],
                         capture_output=True, text=True, timeout=120, check=True).stdout.split()
    if not torch.cuda.is_available():
        assert out == ["None", "False"]
        return
    total = torch.cuda.get_device_properties(0).total_memory
    assert float(out[0]) == pytest.approx((1 << 30) / total)
