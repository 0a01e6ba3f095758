"""Reading images safely: one place that turns a file (or bytes) into an RGB PIL image or a clear error.

A floor-1 primitive (it imports only vestis.errors): the catalogue checks images with it, vision decodes
them for the trunk, the server and the overlays for uploads and explanations."""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import warnings
from pathlib import Path

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from vestis.errors import VestisError

# Refuse decompression bombs outright instead of PIL's warning-then-continue.
MAX_PIXELS = 40_000_000
# glibc's mmap threshold for long-running processes that decode large images (`return_large_buffers`)
MMAP_THRESHOLD = 1 << 20


class ImageReadError(VestisError):
    pass


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright as stored; 5-8 swap width and height). A damaged EXIF block
    counts as upright: the pixels are still good."""
    try:
        return int(im.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # noqa: BLE001 - Pillow raises many kinds on malformed EXIF
        return 1


def return_large_buffers(threshold: int = MMAP_THRESHOLD) -> bool:
    """Make freed large image buffers go back to the operating system at once (glibc only; False elsewhere).

    glibc raises its mmap threshold after the first large free (up to 32 MiB), so Pillow's 16 MiB image blocks
    then come from per-thread heaps that keep them: 16 concurrent 19 MP PNG uploads left `vestis serve` 1 GB
    larger for good. A fixed threshold keeps every allocation of `threshold` bytes or more in its own mapping,
    returned when freed. Process-wide; the server calls it once at start."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(-3, int(threshold)))  # -3: M_MMAP_THRESHOLD in glibc's malloc.h
    except (OSError, AttributeError, TypeError):
        return False


def load_rgb(source: str | Path | bytes, max_pixels: int = MAX_PIXELS, draft: tuple[int, int] | None = None,
             reduce_to: tuple[int, int] | None = None) -> Image.Image:
    """Decode an image file or bytes to RGB; raise ImageReadError for missing, corrupt, or oversized images.

    `draft=(w, h)`: JPEGs much larger than that are decoded at a reduced DCT scale (1/2, 1/4, 1/8) that
    still keeps them at least w x h - several times faster, for callers that downscale anyway; the file's
    own size is then in `im.info["original_size"]`.

    `reduce_to=(w, h)`: an image of any format still at least twice that in both sides after decoding is
    reduced right away (`Image.reduce`, a box filter, by the largest whole factor that keeps it at least w x h),
    before its orientation and colour mode are applied, so those copies are small; `original_size` as for draft.
    For callers that only show a small picture (overlays). The trunk's input (`vestis.vision.preprocess`) does
    not use it: its pixels are part of the feature cache key.

    The EXIF orientation is applied (a phone photo stored sideways with tag 6 comes back upright), so every
    caller - extraction, uploads, explanations - sees the same upright pixels; `original_size` and `size`
    are the upright sizes."""
    name = "<upload>" if isinstance(source, bytes) else str(source)
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    except OSError as e:
        raise ImageReadError(f"cannot open image {name}: {e.strerror or e}") from None
    with fp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(fp)
                if im.width * im.height > max_pixels:
                    raise ImageReadError(f"image {name} is {im.width}x{im.height} pixels, over the limit of {max_pixels}")
                orientation = exif_orientation(im)
                swapped = orientation in (5, 6, 7, 8)  # stored sideways: width and height trade places
                if draft is not None and im.format == "JPEG":
                    upright = im.size[::-1] if swapped else im.size
                    im.draft("RGB", draft[::-1] if swapped else draft)  # the draft size is in stored orientation
                    im.info["original_size"] = upright  # survives convert(); the decoded size may be smaller
                im.load()
                if reduce_to is not None:
                    target = reduce_to[::-1] if swapped else reduce_to
                    factor = min(im.width // target[0], im.height // target[1])
                    if factor >= 2:
                        upright = im.info.get("original_size", im.size[::-1] if swapped else im.size)
                        im = im.reduce(factor)  # keeps im.info (with the EXIF orientation)
                        im.info["original_size"] = upright
                if orientation != 1:
                    ImageOps.exif_transpose(im, in_place=True)  # in place: keeps im.info
        except ImageReadError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
                Image.DecompressionBombWarning) as e:
            raise ImageReadError(f"cannot decode image {name}: {e}") from None
    if im.mode != "RGB":
        if im.mode in ("RGBA", "LA", "P") and ("transparency" in im.info or im.mode != "P"):
            # Composite transparent product shots onto white, as catalogues display them.
            im = im.convert("RGBA")
            bg = Image.new("RGB", im.size, (255, 255, 255))
            bg.paste(im, mask=im.getchannel("A"))
            if "original_size" in im.info:
                bg.info["original_size"] = im.info["original_size"]
            im = bg
        else:
            im = im.convert("RGB")
    return im
