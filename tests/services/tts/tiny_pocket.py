"""A tiny Pocket TTS model built locally: a config with small dimensions, a BPE tokenizer
trained on a few sentences, and random weights saved as safetensors. It runs the real
pocket-tts code path (config loading, tokenizer, FlowLM, Mimi, voice prompt, streaming) in
seconds on a CPU, and says nothing intelligible: operators provide real weights.
Used by tests/services/tts/test_pocket.py and bench/tts."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import yaml

TEXT = [
    "Hello there, this is a tiny model.",
    "The quick brown fox jumps over the lazy dog.",
    "Pack my box with five dozen liquor jugs!",
    "How vexingly quick daft zebras jump?",
]


def _config(tokenizer: str, n_bins: int, weights: str | None) -> dict:
    seanet = {"dimension": 32, "channels": 1, "n_filters": 4, "n_residual_layers": 1,
              "ratios": [6, 5, 4], "kernel_size": 7, "residual_kernel_size": 3,
              "last_kernel_size": 3, "dilation_base": 2, "pad_mode": "constant", "compress": 2}
    config = {
        "flow_lm": {
            "dtype": "float32",
            "insert_bos_before_voice": True,
            "flow": {"depth": 1, "dim": 32},
            "transformer": {"d_model": 32, "hidden_scale": 2, "max_period": 10000,
                            "num_heads": 2, "num_layers": 1},
            "lookup_table": {"dim": 32, "n_bins": n_bins, "tokenizer": "tokenizers",
                             "tokenizer_path": tokenizer},
        },
        "mimi": {
            "dtype": "float32", "sample_rate": 24000, "channels": 1, "frame_rate": 12.5,
            "inner_dim": 8, "outer_dim": 32, "seanet": seanet,
            "transformer": {"d_model": 32, "num_heads": 2, "num_layers": 1, "layer_scale": 0.01,
                            "context": 50, "dim_feedforward": 64, "input_dimension": 32,
                            "output_dimensions": [32]},
            "quantizer": {"dimension": 8, "output_dimension": 32},
        },
    }
    if weights:
        config["weights_path"] = weights
    return config


def _tokenizer(path: Path) -> int:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>"],
                                  initial_alphabet=list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'- "))
    tok.train_from_iterator(TEXT * 4, trainer)
    tok.save(str(path))
    return tok.get_vocab_size()


def voice_wav(path: Path, seconds: float = 1.0, rate: int = 24000) -> Path:
    """A voice prompt: a gliding tone with a little noise (pocket reads 16-bit WAV itself)."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(0)
    signal = 0.3 * np.sin(2 * np.pi * (150 + 50 * t) * t) + 0.02 * rng.standard_normal(t.size)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((signal * 32767).astype("<i2").tobytes())
    return path


def build(directory: Path) -> Path:
    """Write tokenizer.json, model.safetensors, config.yaml and voices/ under `directory`;
    returns the config path. Paths in the config are relative to it."""
    import safetensors.torch
    import torch
    from pocket_tts import TTSModel

    directory.mkdir(parents=True, exist_ok=True)
    n_bins = _tokenizer(directory / "tokenizer.json")
    draft = directory / "draft.yaml"
    cfg = _config(str(directory / "tokenizer.json"), n_bins, None)
    draft.write_text(yaml.safe_dump(cfg))
    torch.manual_seed(0)
    model = TTSModel.load_model(config=draft)  # no weights: pocket initialises them randomly
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                                str(directory / "model.safetensors"))
    draft.unlink()
    config = directory / "config.yaml"
    config.write_text(yaml.safe_dump(_config("tokenizer.json", n_bins, "model.safetensors")))
    (directory / "voices").mkdir(exist_ok=True)
    voice_wav(directory / "voices" / "tone.wav")
    return config
