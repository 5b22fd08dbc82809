"""Uploaded image bytes → the model's input, with limits, and the exact offline eval transform.

The offline pipeline (``reidloop.data.transforms.build_transforms(h, w, train=False)``) is
``ToImage → Resize (uint8) → ToDtype(float, scale) → Normalize``. :class:`InputTransform` splits it
after the resize: the service keeps the resized uint8 image (3×h×w, ~4× smaller than floats) so
a gallery can be re-embedded exactly when the model changes, and normalises whole batches at once.
The composition equals ``build_transforms`` bit for bit.
"""
from __future__ import annotations

import io
from typing import Optional

import torch
from PIL import Image
from torchvision.transforms import v2

from ..data.transforms import build_transforms
from .errors import ServingError

# Decoders the service accepts (PIL.Image.open would otherwise try every plugin it has).
FORMATS = ("JPEG", "PNG", "BMP", "WEBP")
IMAGE_CONTENT_TYPES = ("image/jpeg", "image/png", "image/bmp", "image/webp", "image/x-ms-bmp")


def check_image_content_type(content_type: Optional[str], what: str = "body") -> None:
    """415 unless ``content_type`` is an image type (parameters such as ``; charset`` are ignored)."""
    base = (content_type or "").split(";")[0].strip().lower()
    if not base.startswith("image/"):
        raise ServingError(415, f"{what}: content type {content_type or 'missing'!r} is not an image type "
                                f"(send multipart/form-data with an 'image' file, or a raw body with one of "
                                f"{', '.join(IMAGE_CONTENT_TYPES)})")


def decode_image(data: bytes, *, max_pixels: int, what: str = "image") -> Image.Image:
    """Fully decode ``data`` into an RGB image, as ``reidloop.data.images.load_image`` decodes files.

    Raises ServingError: 400 for empty, truncated or non-image data (or a format outside FORMATS),
    413 when width × height exceeds ``max_pixels`` (checked on the header, before decoding).
    """
    if not data:
        raise ServingError(400, f"{what}: empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:
            _check_pixels(img, max_pixels, what)
            img.load()
            return img.convert("RGB")
    except ServingError:
        raise
    except Image.DecompressionBombError as exc:  # PIL's own guard, at 2 × Image.MAX_IMAGE_PIXELS
        raise ServingError(413, f"{what}: too many pixels ({exc})") from None
    except Image.UnidentifiedImageError:
        raise ServingError(400, f"{what}: not an image in a supported format ({', '.join(FORMATS)}); "
                                f"{len(data)} bytes starting {data[:8]!r}") from None
    except Exception as exc:  # any decoder failure: PIL raises OSError, SyntaxError, ValueError, ...
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ServingError(400, f"{what}: cannot decode image, truncated or corrupt ({len(data)} bytes): "
                                f"{detail}") from None


def _check_pixels(img: Image.Image, max_pixels: int, what: str) -> None:
    if img.width * img.height > max_pixels:
        raise ServingError(413, f"{what}: {img.width}x{img.height} = {img.width * img.height} pixels "
                                f"exceed the limit of {max_pixels}")


def check_request_pixels(files: list[tuple[str, bytes]], max_request_pixels: int, max_pixels: int) -> None:
    """413 when one image holds more than ``max_pixels`` or the images of one request more than
    ``max_request_pixels`` together, read from their headers before anything is decoded. Files that do not
    open are left to :func:`decode_image` to report."""
    total = 0
    for name, data in files:
        try:
            with Image.open(io.BytesIO(data), formats=FORMATS) as img:
                size = img.width * img.height
        except Exception:
            continue
        if size > max_pixels:
            raise ServingError(413, f"{name}: {size} pixels exceed the limit of {max_pixels}")
        total += size
        if total > max_request_pixels:
            raise ServingError(413, f"the {len(files)} images of this request hold more than "
                                    f"max_request_pixels={max_request_pixels} pixels together")


class InputTransform:
    """``build_transforms(height, width, train=False)`` split into a per-image and a per-batch half."""

    def __init__(self, height: int, width: int) -> None:
        steps = list(build_transforms(height, width, train=False).transforms)
        cut = next((i for i, s in enumerate(steps) if isinstance(s, v2.ToDtype)), None)
        if cut is None:
            raise ValueError(f"eval transform {steps} has no ToDtype step to split at")
        self.height, self.width = height, width
        self._resize = v2.Compose(steps[:cut])
        self._normalize = v2.Compose(steps[cut:])

    def resize(self, img: Image.Image) -> torch.Tensor:
        """RGB image → uint8 tensor (3, height, width)."""
        return self._resize(img).as_subclass(torch.Tensor).contiguous()

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, height, width) → normalised float32, as the offline extractor feeds the model."""
        if batch.dtype != torch.uint8 or tuple(batch.shape[1:]) != (3, self.height, self.width):
            raise ValueError(f"expected uint8 (B, 3, {self.height}, {self.width}), got {batch.dtype} "
                             f"{tuple(batch.shape)}")
        return self._normalize(batch)

    def __call__(self, data: bytes, *, max_pixels: int, what: str = "image") -> torch.Tensor:
        """Encoded image bytes → uint8 (3, height, width); ServingError for bad input."""
        return self.resize(decode_image(data, max_pixels=max_pixels, what=what))
