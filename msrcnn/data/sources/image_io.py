"""Reading image files into RGB uint8, the one pixel format the rest of msrcnn sees.

    image = read_image(path, expected_hw=(480, 640), policy=policy)
    image.pixels      # uint8 [H, W, 3]
    image.encoded     # bytes to store: the original JPEG when it decodes to exactly these
                      # pixels, else a lossless PNG of them

Normalisation, in order:
  * EXIF orientation applied (cameras store portrait photos sideways with a rotation tag;
    browsers and annotation tools show them upright, so that is the frame annotations use);
  * greyscale, palette, CMYK, RGBA / LA (alpha dropped) converted to RGB;
  * 16-bit and 32-bit integer images scaled to 8 bits (value * 255 / max of the type), float
    images clipped to [0, 1] and scaled.

If the annotation gives the image size and it matches the stored pixels but not the EXIF-rotated
ones, the annotations were made on the stored pixels: the rotation is then not applied (and
counted). Any other size mismatch, a missing, unreadable or truncated file is a `problem` of the
`BadInputPolicy` (an error naming the file, or a counted skip).
"""

from __future__ import annotations

import dataclasses
import io
import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from msrcnn.data.sources.bad_input import BadInputPolicy

_EXIF_ORIENTATION = 0x0112


@dataclasses.dataclass(frozen=True)
class LoadedImage:
    """An image file read and normalised.

    Attributes:
      pixels: uint8 [H, W, 3] RGB.
      encoded: JPEG or PNG bytes that decode to `pixels` (the original file when possible).
      path: where it was read from.
    """

    pixels: np.ndarray
    encoded: bytes
    path: str

    @property
    def hw(self) -> tuple[int, int]:
        return self.pixels.shape[0], self.pixels.shape[1]


def to_rgb_uint8(image: Image.Image) -> np.ndarray:
    """Any PIL image -> uint8 [H, W, 3] RGB (see the module docstring for the rules)."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image)
        top = 65535.0 if mode.startswith("I;16") or values.max(initial=0) <= 65535 else 2**32 - 1
        grey = np.clip(np.rint(values.astype(np.float64) * 255.0 / top), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, np.float64))
        grey = np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, np.uint8)


def encode_png(pixels: np.ndarray) -> bytes:
    """Lossless PNG bytes of a uint8 array. compress_level=1: ~40% faster than the default 6
    for ~10% larger files (measured on the shapes backgrounds)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def read_image(
    path: str | os.PathLike,
    policy: BadInputPolicy,
    expected_hw: tuple[int, int] | None = None,
    context: str = "",
) -> LoadedImage | None:
    """Reads and normalises one image file.

    Args:
      path: the file.
      policy: where problems go (raise or count).
      expected_hw: (height, width) the annotation gives, checked against the pixels.
      context: words naming who refers to the file (e.g. "image id 42 in train.json"),
        used in messages.

    Returns:
      The image, or None when it is bad and the policy skips it.
    """
    path = os.fspath(path)
    where = f"{path} ({context})" if context else path
    # Problems are reported after the except clauses, so that the error raised (when the policy
    # does not skip) is the message alone, without the caught exception chained to it.
    unreadable = undecodable = None
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        unreadable = e.strerror or str(e)
    if unreadable is not None:
        policy.problem(
            "missing or unreadable image file",
            f"cannot read image {where}: {unreadable}; check the image folder setting",
        )
        return None
    size_mismatch = None
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            stored_hw = (opened.height, opened.width)
            orientation = opened.getexif().get(_EXIF_ORIENTATION, 1)
            rotated = ImageOps.exif_transpose(opened)
            plain_rgb_jpeg = opened.format == "JPEG" and opened.mode == "RGB"
            shown_hw = (rotated.height, rotated.width)
            if expected_hw is not None and shown_hw != tuple(expected_hw):
                if stored_hw == tuple(expected_hw):
                    policy.note(
                        "EXIF rotation not applied: annotations match the stored pixels",
                        f"{where}: EXIF orientation {orientation} but the annotation size "
                        f"{tuple(expected_hw)} is that of the stored pixels",
                    )
                    rotated, orientation = opened, 1
                else:
                    size_mismatch = (stored_hw, shown_hw)
            if size_mismatch is None:
                pixels = to_rgb_uint8(rotated)
    except UnidentifiedImageError:
        undecodable = "Pillow cannot identify it as an image (damaged, or not an image file)"
    except (OSError, SyntaxError, ValueError) as e:
        undecodable = str(e)
    if undecodable is not None:
        policy.problem(
            "corrupt image file",
            f"cannot decode image {where}: {undecodable}; re-download or remove the file",
        )
        return None
    if size_mismatch is not None:
        (h, w), shown = size_mismatch
        rotation = f", {shown[0]}x{shown[1]} after its EXIF rotation" if shown != (h, w) else ""
        policy.problem(
            "image size differs from the annotation",
            f"image {where} is {h}x{w} (height x width){rotation} but the annotation says "
            f"{expected_hw[0]}x{expected_hw[1]}: the file does not belong to this annotation "
            "or was resized; fix the annotation's height / width or put the annotated file "
            "in its place",
        )
        return None
    if orientation not in (None, 1):
        policy.note("EXIF orientation applied", f"{where}: orientation {orientation}")
    keep_original = plain_rgb_jpeg and orientation in (None, 1)
    return LoadedImage(pixels, data if keep_original else encode_png(pixels), path)
