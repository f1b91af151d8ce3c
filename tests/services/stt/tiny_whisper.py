"""A tiny Whisper model with RANDOM weights, written as a CTranslate2 model directory, plus a
locally built tokenizer.json, so faster-whisper's real code path (feature extraction,
CTranslate2 encode/generate, timestamp rules, word alignment, language detection, the
translate task) runs in seconds on a CPU with no model hub. Its transcripts are noise: tests
check the shape of the answers, never the words.

Built with `ctranslate2.specs` directly (no torch): a 1-layer encoder and decoder of width 64
over Whisper large-v3's multilingual vocabulary layout (51866 ids: 50257 text tokens, the
special tokens, 100 languages, 1501 timestamps).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

D_MODEL, FFN, HEADS = 64, 128, 2
N_MELS, SOURCE_POSITIONS, TARGET_POSITIONS = 80, 1500, 448
TEXT_TOKENS = 50257  # GPT-2 byte-level BPE size, as Whisper's multilingual vocabulary
TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|>


def special_tokens() -> list[str]:
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    languages = list(_LANGUAGE_CODES)  # 100: the large-v3 layout
    return ["<|endoftext|>", "<|startoftranscript|>", *[f"<|{c}|>" for c in languages], "<|translate|>",
            "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]


def write_tokenizer(path: Path) -> list[str]:
    """A byte-level BPE tokenizer.json with Whisper's special tokens at Whisper's ids; returns
    the vocabulary in id order. The text ids beyond the 256 bytes are fillers no text maps to."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    fillers = [f"Ġ<filler{i}>" for i in range(TEXT_TOKENS - len(alphabet))]
    text = alphabet + fillers
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(text)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = special_tokens()
    tokenizer.add_special_tokens(specials)
    tokenizer.save(str(path))
    return text + specials


def build(directory: Path, seed: int = 0) -> Path:
    """Write model.bin, config.json, vocabulary.json and tokenizer.json into `directory`."""
    from ctranslate2.specs import whisper_spec

    directory.mkdir(parents=True, exist_ok=True)
    vocabulary = write_tokenizer(directory / "tokenizer.json")
    # CTranslate2 takes a Whisper for multilingual when its vocabulary holds the empty token,
    # as the multilingual tokenizer's does (whisper.cc, `to_id("") != unk_id`); one filler
    # becomes it here (tokenizers cannot hold an empty token, and no text maps to it anyway).
    vocabulary[TEXT_TOKENS - 1] = ""
    vocabulary += ["<|%.2f|>" % (i * 0.02) for i in range(TIMESTAMPS)]
    vocab_size = len(vocabulary)
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    def norm(spec) -> None:
        spec.gamma = np.ones(D_MODEL, np.float32)
        spec.beta = np.zeros(D_MODEL, np.float32)

    def linear(spec, out: int, inp: int, bias: bool = True) -> None:
        spec.weight = w(out, inp)
        if bias:
            spec.bias = w(out)

    def ffn(spec) -> None:
        norm(spec.layer_norm)
        linear(spec.linear_0, FFN, D_MODEL)
        linear(spec.linear_1, D_MODEL, FFN)

    spec = whisper_spec.WhisperSpec(1, HEADS, 1, HEADS)
    enc = spec.encoder
    enc.conv1.weight, enc.conv1.bias = w(D_MODEL, N_MELS, 3), w(D_MODEL)
    enc.conv2.weight, enc.conv2.bias = w(D_MODEL, D_MODEL, 3), w(D_MODEL)
    enc.position_encodings.encodings = w(SOURCE_POSITIONS, D_MODEL)
    norm(enc.layer_norm)
    for layer in enc.layer:
        norm(layer.self_attention.layer_norm)
        linear(layer.self_attention.linear[0], 3 * D_MODEL, D_MODEL)  # fused q, k, v
        linear(layer.self_attention.linear[1], D_MODEL, D_MODEL)
        ffn(layer.ffn)
    dec = spec.decoder
    dec.embeddings.weight = w(vocab_size, D_MODEL)
    dec.position_encodings.encodings = w(TARGET_POSITIONS, D_MODEL)
    norm(dec.layer_norm)
    linear(dec.projection, vocab_size, D_MODEL, bias=False)
    for layer in dec.layer:
        norm(layer.self_attention.layer_norm)
        linear(layer.self_attention.linear[0], 3 * D_MODEL, D_MODEL)
        linear(layer.self_attention.linear[1], D_MODEL, D_MODEL)
        norm(layer.attention.layer_norm)
        linear(layer.attention.linear[0], D_MODEL, D_MODEL)  # queries
        linear(layer.attention.linear[1], 2 * D_MODEL, D_MODEL)  # fused keys, values of the audio
        linear(layer.attention.linear[2], D_MODEL, D_MODEL)
        ffn(layer.ffn)
    eot = vocabulary.index("<|endoftext|>")
    spec.config.suppress_ids = []
    spec.config.suppress_ids_begin = [eot]
    spec.config.lang_ids = [i for i, t in enumerate(vocabulary[:vocab_size - TIMESTAMPS])
                            if t.startswith("<|") and len(t) <= 7 and t[2:-2].isalpha() and t[2:-2].islower()]
    spec.config.alignment_heads = [(0, h) for h in range(HEADS)]
    spec.register_vocabulary(vocabulary)
    spec.validate()
    spec.optimize(quantization="int8")
    spec.save(str(directory))
    return directory
