"""Builds a tiny Stable Diffusion pipeline from configs with random weights and saves it with
`save_pretrained`, so the diffusers backend runs its real code path with no model hub.

`size="tiny"` (the tests): ~2 MB, ~0.2 s to build, a 2-step 64x64 image in well under a second
on CPU. `size="sd15"` (the GPU bench): Stable Diffusion 1.5's architecture (UNet ~860M params,
CLIP ViT-L text encoder, the SD VAE) with random weights, so GPU timings mean something.

transformers 5 no longer ships a slow CLIP tokenizer that works without files: we write a
byte-level BPE vocabulary (`vocab.json`, `merges.txt`) ourselves.
"""

from __future__ import annotations

import json
from pathlib import Path


def _bytes_to_unicode() -> list[str]:
    # GPT-2/CLIP's reversible byte -> printable character table.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_clip_tokenizer_files(directory: Path) -> int:
    """A minimal CLIP BPE vocabulary: every byte alone and word-final, no merges. Returns its size."""
    directory.mkdir(parents=True, exist_ok=True)
    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return len(vocab)


def build_tiny_pipeline(directory: Path, size: str = "tiny", seed: int = 0, dtype=None, device=None) -> Path:
    """Write a random-weight StableDiffusionPipeline to `directory` and return it. `device`
    (e.g. "cuda") is where the weights are initialised: much faster than the CPU for `sd15`."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    torch.manual_seed(seed)
    directory = Path(directory)
    tok_dir = directory / "_tokenizer_src"
    vocab_size = write_clip_tokenizer_files(tok_dir)
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77)
    with torch.device(device or "cpu"):
        unet, vae, text_encoder = _models(size, vocab_size)
    # steps_offset=1 as SD 1.5's own scheduler config (0 draws a FutureWarning).
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    if dtype is not None:
        pipe.to(dtype=dtype)
    pipe.save_pretrained(directory)
    return directory


def _models(size: str, vocab_size: int):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if size == "tiny":
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
            norm_num_groups=32,
        )
        vae = AutoencoderKL(
            block_out_channels=[32, 64], in_channels=3, out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
            latent_channels=4, sample_size=64,
        )
        text_config = CLIPTextConfig(
            bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-5,
            num_attention_heads=4, num_hidden_layers=5, pad_token_id=1, vocab_size=max(1000, vocab_size),
        )
    elif size == "sd15":
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # SD 1.5's defaults
        vae = AutoencoderKL(
            block_out_channels=[128, 256, 512, 512], in_channels=3, out_channels=3, latent_channels=4,
            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
            layers_per_block=2, sample_size=512,
        )
        text_config = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                     num_attention_heads=12, num_hidden_layers=12, hidden_act="quick_gelu")
    else:
        raise ValueError(f"unknown size {size!r}")
    return unet, vae, CLIPTextModel(text_config)
