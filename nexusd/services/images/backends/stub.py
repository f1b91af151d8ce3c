"""The `stub` backend: no model, deterministic pictures drawn with Pillow.

The same prompt, seed and size give the same bytes; without a seed the seed comes from the
prompt (so a retried request gets the same picture). Different prompts give visibly different
pictures: a seeded pattern of coloured rectangles with the prompt written on it.
"""

from __future__ import annotations

import hashlib
import random
import textwrap

from PIL import Image, ImageDraw, ImageFont

from nexusd.services.images.backends import Backend, Job, JobCancelled


def prompt_seed(prompt: str) -> int:
    return int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big")


class StubBackend(Backend):
    native_size = (512, 512)

    def load(self) -> None:
        self.font = ImageFont.load_default()
        self.details = {"backend": "stub", "note": "deterministic test pattern, no model"}

    def default_seed(self, prompt: str) -> int:
        return prompt_seed(prompt)  # deterministic: a retried request gets the same picture

    def generate(self, job: Job) -> list[Image.Image]:
        base = job.seed
        images = []
        for i in range(job.n):
            if job.cancelled.is_set():
                raise JobCancelled
            images.append(self.draw(job.prompt, (base + i) % 2**32, job.width, job.height))
            job.steps_done = i + 1
            job.on_step(i + 1, job.n)
        return images

    def draw(self, prompt: str, seed: int, width: int, height: int) -> Image.Image:
        # A private Random: the global one is shared with every other thread.
        rng = random.Random(f"{seed}:{prompt}")
        image = Image.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        for _ in range(12):
            x0, y0 = rng.randrange(width), rng.randrange(height)
            x1, y1 = x0 + rng.randrange(width // 2 + 1), y0 + rng.randrange(height // 2 + 1)
            draw.rectangle((x0, y0, x1, y1), fill=tuple(rng.randrange(256) for _ in range(3)))
        text = "\n".join(textwrap.wrap(prompt[:300], max(8, width // 7))[: max(1, height // 14)])
        draw.multiline_text((5, 5), f"stub seed={seed}\n{text}", fill=(255, 255, 255), font=self.font,
                            stroke_width=1, stroke_fill=(0, 0, 0))
        return image
