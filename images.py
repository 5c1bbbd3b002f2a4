"""Image files in, pictures of what the ViT sees out: the one decoder for training and serving.

`load_rgb` is the one door every image goes through (training data, uploads, the command line): it refuses what is
not a usable photo with an `ImageError` whose message a user can act on, and returns 8-bit RGB for everything else,
whatever the file's mode, orientation or size, so a photo trains as it is served. `patch_grid` and
`attention_overlay` draw the model's view of a preprocessed image (Figure 1 of the ViT paper).
"""

import math
from pathlib import Path
from typing import BinaryIO

import matplotlib
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from hub import EXAMPLES_FOLDER

# About 67 megapixels: above any phone or consumer camera. Checked on the header, before any
# pixel is decoded, so a small file declaring a huge canvas (a decompression bomb) costs nothing.
# Pillow's own guard (Image.MAX_IMAGE_PIXELS, 89 MP warning, 179 MP error) stays in place behind it.
MAX_PIXELS = 8192 * 8192

# A photo whose long side is more than this many times its short side is refused, also on the
# header. The weights' transforms resize the short side to 256 pixels, so a long thin strip (a
# 1,000,000x4 PNG is a few KB) would become a 64,000,000x256 image, tens of gigabytes.
# Refusing is simpler than pre-cropping to what the centre crop keeps, and exact: pre-cropping
# would change the resized width's rounding and so the pixels the model sees. 20:1 still takes
# phone panoramas (about 4:1 to 10:1) and bounds the resized long side at 20 x 256 pixels.
MAX_ASPECT_RATIO = 20

EXAMPLES_DIR = Path(__file__).resolve().parent / EXAMPLES_FOLDER
# torchvision's ImageFolder list, so a folder reads the same here and there.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# Modes Pillow stores 16-bit (or wider) grey levels in; its convert() clips them at 255.
WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def is_hidden(path: Path) -> bool:
    """Dot folders and files (.ipynb_checkpoints, .DS_Store, macOS's ._ copies) are tool debris, not data."""
    return path.name.startswith(".") or path.name == "__MACOSX"


def is_image(path: Path) -> bool:
    """Whether `path` is named as an image file (IMAGE_EXTENSIONS), whatever the case of its extension."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def images_in(folder: Path) -> list[Path]:
    """The image files in a folder (not its subfolders), sorted: by their extensions (IMAGE_EXTENSIONS), debris left
    out (is_hidden). The bundled examples and predict.py's folders read this way; training's class folders are read
    at any depth (data.files_below), as torchvision's ImageFolder reads them."""
    return sorted(path for path in folder.iterdir() if is_image(path) and not is_hidden(path) and path.is_file())


def example_photos() -> list[Path]:
    """The bundled example photos: the page's examples, the int8 path's calibration and self-check."""
    return images_in(EXAMPLES_DIR)


class ImageError(ValueError):
    """An upload that cannot be used as a photo; the message says why and what to do."""


# The decoders an upload may reach: the formats of IMAGE_EXTENSIONS (JPEG's includes MPO, a phone's JPEG with a
# preview or depth map), and GIF and AVIF, which browsers save pictures from the web as. Pillow would otherwise also
# hand a file named .jpg to its EPS reader, which runs Ghostscript on it, or to any of its other plugins.
PHOTO_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "AVIF", "BMP", "TIFF", "PPM")

# EXIF orientation (tag 0x0112) to the transpose that makes the photo upright, as the EXIF standard defines the tag.
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
ORIENTATION = 0x0112
# What Pillow's readers raise on damaged data besides OSError: PPM's on a damaged header ValueError, AVIF's RuntimeError
DAMAGED_DATA_ERRORS = (ValueError, RuntimeError, SyntaxError, EOFError)


# ISO base media files (HEIF, AVIF) start with an ftyp box naming their major brand; these are HEIF's HEVC photos
# (ISO/IEC 23008-12), which Pillow cannot decode (AVIF it can)
HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx")


def is_heif(source: str | Path | BinaryIO) -> bool:
    """Whether `source` starts as a HEIC/HEIF photo does."""
    try:
        if isinstance(source, (str, Path)):
            with open(source, "rb") as file:
                header = file.read(12)
        else:
            source.seek(0)
            header = source.read(12)
    except OSError:
        return False
    return header[4:8] == b"ftyp" and header[8:12] in HEIF_BRANDS


def load_rgb(source: str | Path | BinaryIO, min_size: int | None = None) -> Image.Image:
    """Decode an image file to 8-bit RGB, upright (EXIF orientation applied).

    min_size: the shortest side the caller needs (the model's resize size). Big JPEGs are then
    decoded at a reduced scale (1/2, 1/4 or 1/8, JPEG draft mode) that still covers it, which
    makes a 12-megapixel phone photo decode several times faster in a fraction of the memory.
    """
    damaged = "This image file is damaged or truncated and cannot be decoded ({}). Please upload the complete file."
    side = math.isqrt(MAX_PIXELS)
    too_large = f"more than the limit of {MAX_PIXELS:,} ({side}x{side}). Please downscale it and try again."
    try:
        image = Image.open(source, formats=PHOTO_FORMATS)
    except FileNotFoundError:
        raise ImageError(f"No such file: {source}.") from None
    except UnidentifiedImageError:
        if is_heif(source):
            raise ImageError(
                "This is a HEIC/HEIF photo (the iPhone camera's format), which this app cannot decode. Please "
                "convert it to JPEG (on a Mac: open it in Preview, File > Export) and upload that."
            ) from None
        raise ImageError(
            "This file is not an image that can be read (it may be another kind of file or "
            "badly damaged). Please upload a photo: JPEG, PNG, WebP, AVIF, GIF, BMP or TIFF."
        ) from None
    except Image.DecompressionBombError:  # Pillow's own guard, raised where a format's header is read at open
        raise ImageError(f"This image has {too_large}") from None
    except OSError as error:
        if error.filename is not None:  # the file system's refusal, of a path given on the command line or in a dataset
            raise ImageError(f"Cannot read {source}: {error.strerror}.") from None
        raise ImageError(damaged.format(error)) from None  # a format recognised, its data refused (a truncated WebP)
    except DAMAGED_DATA_ERRORS as error:
        raise ImageError(damaged.format(error)) from None
    with image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ImageError(f"This image is {width}x{height} pixels ({width * height:,}), {too_large}")
        if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
            raise ImageError(
                f"This image is {width}x{height} pixels: its long side is more than {MAX_ASPECT_RATIO} times its "
                "short side, the limit. The model sees only the middle square of a photo: please crop it to the "
                "food and try again."
            )
        if image.mode == "F":
            raise ImageError(
                "This image holds floating-point values (a scientific or HDR image), not a photo's 8 or 16-bit "
                "levels. Please save it as a JPEG or PNG photo and try again."
            )
        if min_size is not None:
            image.draft("RGB", (min_size, min_size))  # JPEG only; a no-op for other formats
        try:
            image.load()  # before the EXIF block, which a PNG may keep after its pixels
        except (OSError, *DAMAGED_DATA_ERRORS) as error:
            raise ImageError(damaged.format(error)) from None
        try:
            orientation = image.getexif().get(ORIENTATION)
        except Exception as error:  # Pillow's EXIF parser raises what a damaged block makes it (struct.error, ...)
            raise ImageError(
                f"This photo's EXIF metadata, which holds its orientation, is damaged ({type(error).__name__}: "
                f"{error}). Please save the photo again (any photo editor does) and upload that."
            ) from None
        upright = image.transpose(UPRIGHT[orientation]) if orientation in UPRIGHT else image
        return to_rgb(upright)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any Pillow mode: transparency is composited on white (the colour a page
    shows behind a transparent photo), 16-bit grey levels are rescaled, not clipped."""
    if image.mode in WIDE_GREY_MODES:
        levels = np.asarray(image)
        grey = np.clip((levels.astype(np.float32) / 257).round(), 0, 255).astype(np.uint8)  # 65535 -> 255
        transparent = image.info.get("transparency")  # a PNG's one transparent grey level, in 16 bits
        if isinstance(transparent, int):
            alpha = np.where(levels == transparent, 0, 255).astype(np.uint8)
            image = Image.fromarray(np.stack([grey, alpha], axis=-1), mode="LA")
        else:
            image = Image.fromarray(grey)
    if image.has_transparency_data:
        white = Image.new("RGBA", image.size, "white")
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def to_display(pixels: torch.Tensor, mean: list[float], std: list[float]) -> Image.Image:
    """The (3, H, W) model input as a picture: the transforms' normalisation undone."""
    # in 0..255 in place, on one new tensor: a request draws this for several views, and each new 224x224 tensor
    # costs more than its arithmetic
    shift, scale = torch.tensor(mean).view(3, 1, 1) * 255, torch.tensor(std).view(3, 1, 1) * 255
    levels = torch.addcmul(shift, pixels.detach().float().cpu(), scale).clamp_(0, 255).round_()
    return Image.fromarray(levels.to(torch.uint8).permute(1, 2, 0).contiguous().numpy())


def patch_grid(image: Image.Image, patch_size: int, gap: int = 3) -> Image.Image:
    """The image cut into its patch_size x patch_size patches, laid out with white gaps: the
    sequence of "16x16 words" the transformer reads (Figure 1; Eq. 1 flattens them row by row)."""
    columns, rows = image.width // patch_size, image.height // patch_size
    step = patch_size + gap
    grid = Image.new("RGB", (columns * step - gap, rows * step - gap), "white")
    for row in range(rows):
        for column in range(columns):
            box = (column * patch_size, row * patch_size, (column + 1) * patch_size, (row + 1) * patch_size)
            grid.paste(image.crop(box), (column * step, row * step))
    return grid


def attention_overlay(image: Image.Image, attention: torch.Tensor, opacity: float = 0.55) -> Image.Image:
    """A (rows, columns) map of patch weights drawn over the image, one flat colour per patch
    (nearest-neighbour upsampling: the model attends to whole patches, not to pixels)."""
    weights = attention.detach().float().cpu()
    weights = (weights - weights.min()) / (weights.max() - weights.min()).clamp_min(1e-12)
    colours = matplotlib.colormaps["inferno"](weights.numpy(), bytes=True)[..., :3]
    heatmap = Image.fromarray(colours).resize(image.size, Image.Resampling.NEAREST)
    return Image.blend(image.convert("RGB"), heatmap, opacity)
