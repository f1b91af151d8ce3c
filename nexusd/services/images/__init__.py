"""The images service: OpenAI-compatible text to image (docs/images.md)."""

from nexusd.services.images.service import ImagesService
from nexusd.services.images.settings import ImagesSettings

__all__ = ["ImagesService", "ImagesSettings"]
