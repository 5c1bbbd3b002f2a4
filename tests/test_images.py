"""images.py: every kind of upload decodes to the right RGB pixels, or fails with a clear message."""

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from images import MAX_ASPECT_RATIO, MAX_PIXELS, ImageError, attention_overlay, load_rgb, patch_grid, to_display
from standins import encoded, png_declaring


def pixel(image: Image.Image, x: int = 0, y: int = 0) -> tuple[int, int, int]:
    return image.getpixel((x, y))


def test_grayscale_becomes_equal_rgb_channels():
    image = load_rgb(encoded(Image.new("L", (8, 8), 77), "PNG"))
    assert image.mode == "RGB" and pixel(image) == (77, 77, 77)


def test_palette_gif_keeps_its_colours():
    source = Image.new("RGB", (8, 8), (200, 30, 60))
    source.paste((10, 120, 250), (4, 0, 8, 8))
    image = load_rgb(encoded(source.convert("P", palette=Image.Palette.ADAPTIVE, colors=4), "GIF"))
    assert pixel(image, 0, 0) == (200, 30, 60) and pixel(image, 7, 7) == (10, 120, 250)


def test_transparent_gif_pixels_become_white():
    source = Image.new("P", (4, 4), 1)
    source.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    source.putpixel((0, 0), 0)
    image = load_rgb(encoded(source, "GIF", transparency=0))
    assert pixel(image, 0, 0) == (255, 255, 255) and pixel(image, 3, 3) == (255, 0, 0)


@pytest.mark.parametrize("mode, colour", [("RGBA", (255, 0, 0, 128)), ("LA", (0, 128))])
def test_transparency_is_composited_on_white(mode, colour):
    image = load_rgb(encoded(Image.new(mode, (4, 4), colour), "PNG"))
    expected = (255, 127, 127) if mode == "RGBA" else (127, 127, 127)
    assert all(abs(a - b) <= 1 for a, b in zip(pixel(image), expected))


def test_cmyk_jpeg_converts_to_rgb():
    cyan, yellow = (255, 0, 0, 0), (0, 0, 255, 0)
    source = Image.new("CMYK", (32, 16), cyan)
    source.paste(yellow, (16, 0, 32, 16))
    image = load_rgb(encoded(source, "JPEG", quality=95))
    assert np.allclose(pixel(image, 4, 8), (0, 255, 255), atol=8)
    assert np.allclose(pixel(image, 28, 8), (255, 255, 0), atol=8)


def test_16_bit_png_is_rescaled_not_clipped():
    levels = np.array([[0, 128 * 257, 65535]], dtype=np.uint16)
    image = load_rgb(encoded(Image.fromarray(levels), "PNG"))
    assert [pixel(image, x)[0] for x in range(3)] == [0, 128, 255]


def test_exif_orientation_is_applied():
    source = Image.new("RGB", (40, 20), (255, 0, 0))
    source.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90 degrees clockwise
    image = load_rgb(encoded(source, "JPEG", exif=exif, quality=95))
    assert image.size == (20, 40)
    assert np.allclose(pixel(image, 10, 5), (255, 0, 0), atol=10)  # left half now on top
    assert np.allclose(pixel(image, 10, 35), (0, 0, 255), atol=10)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_turns_the_photo_upright_as_pillow_does(orientation):
    source = Image.fromarray(np.random.default_rng(orientation).integers(0, 256, (6, 10, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    upright = ImageOps.exif_transpose(Image.open(encoded(source, "PNG", exif=exif)))
    assert np.array_equal(np.asarray(load_rgb(encoded(source, "PNG", exif=exif))), np.asarray(upright))


def test_a_malformed_exif_tag_beside_the_orientation_still_decodes_upright():
    """A text value in a number tag made Pillow's exif_transpose, which writes the EXIF block back, raise
    struct.error: an error no caller expected, where only the orientation tag matters."""
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "Maker"
    data = encoded(Image.new("RGB", (60, 40), "red"), "JPEG", exif=exif).getvalue()
    data = data.replace(b"\x01\x0f\x00\x02", b"\x01\x25\x00\x02")  # Make becomes tag 0x0125, a number, holding text
    assert load_rgb(io.BytesIO(data), min_size=256).size == (40, 60)


def test_an_unreadable_exif_block_is_named_as_the_problem():
    exif = Image.Exif()
    exif[0x0112] = 6
    block = bytearray(exif.tobytes())
    block[6] = ord("Q")  # the TIFF header's byte order, "MM" or "II", damaged
    with pytest.raises(ImageError, match="EXIF metadata, which holds its orientation, is damaged"):
        load_rgb(encoded(Image.new("RGB", (8, 8)), "PNG", exif=bytes(block)))


def test_postscript_named_as_a_photo_never_reaches_ghostscript():
    """Pillow's EPS reader runs Ghostscript on the file: no upload may reach it, only photo formats' decoders."""
    postscript = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"
    assert Image.open(io.BytesIO(postscript)).format == "EPS"
    with pytest.raises(ImageError, match="not an image that can be read"):
        load_rgb(io.BytesIO(postscript))


def test_avif_decodes():
    image = load_rgb(encoded(Image.new("RGB", (16, 16), (200, 40, 40)), "AVIF", quality=100))
    assert np.allclose(pixel(image, 8, 8), (200, 40, 40), atol=12)


def test_damaged_avif_and_ppm_are_damaged_files_not_faults():
    """AVIF's decoder raises RuntimeError on damaged data and PPM's reader ValueError on a damaged header, where the
    other decoders raise OSError: all must reach the page and the dataset check as an ImageError."""
    avif = bytearray(encoded(Image.linear_gradient("L").convert("RGB").resize((64, 48)), "AVIF").getvalue())
    avif[avif.index(b"mdat") + 4] ^= 0xFF  # the first byte of the coded picture
    ppm = b"P6\n64 4x\n255\n" + bytes(64 * 4 * 3)
    for data in (bytes(avif), ppm):
        with pytest.raises(ImageError, match="damaged or truncated"):
            load_rgb(io.BytesIO(data))


def test_a_16_bit_png_keeps_its_transparent_level():
    levels = np.array([[0, 1000, 30000]], dtype=np.uint16)
    image = load_rgb(encoded(Image.fromarray(levels), "PNG", transparency=1000))
    assert [pixel(image, x) for x in range(3)] == [(0, 0, 0), (255, 255, 255), (117, 117, 117)]


def test_floating_point_images_are_refused_not_clipped_to_black():
    with pytest.raises(ImageError, match="floating-point values"):
        load_rgb(encoded(Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)), "TIFF"))


def test_a_truncated_webp_is_damaged_and_the_message_keeps_the_servers_paths_to_itself(tmp_path):
    data = encoded(Image.linear_gradient("L").convert("RGB"), "WEBP").getvalue()
    upload = tmp_path / "upload.webp"
    upload.write_bytes(data[:60])
    with pytest.raises(ImageError, match="damaged or truncated") as raised:
        load_rgb(upload)
    assert str(tmp_path) not in str(raised.value)


def test_one_pixel_image():
    image = load_rgb(encoded(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"), min_size=256)
    assert image.size == (1, 1) and pixel(image) == (1, 2, 3)


def test_big_jpeg_decodes_at_reduced_scale_that_still_covers_min_size():
    source = Image.linear_gradient("L").resize((2048, 1536)).convert("RGB")
    image = load_rgb(encoded(source, "JPEG"), min_size=256)
    assert image.width < 2048 and min(image.size) >= 256
    assert load_rgb(encoded(source, "JPEG")).size == (2048, 1536)


@pytest.mark.parametrize("width, height", [(9000, 8000), (100_000, 100_000)])
def test_decompression_bomb_is_refused_before_decoding(width, height):
    assert width * height > MAX_PIXELS
    with pytest.raises(ImageError, match="too large|more than the limit"):
        load_rgb(png_declaring(width, height))


def test_pillows_own_bomb_guard_reads_as_the_pixel_limit():
    """Pillow refuses some huge headers itself, at open, in words that call the visitor an attacker and give another
    limit; the page gives the same limit as for any image over it."""
    with pytest.raises(ImageError) as raised:
        load_rgb(png_declaring(20_000, 20_000))
    assert str(raised.value) == (
        f"This image has more than the limit of {MAX_PIXELS:,} (8192x8192). Please downscale it and try again."
    )


def test_a_heic_photo_is_named_with_what_to_do(tmp_path):
    """An iPhone's HEIC passes the browser's image/* check; "not an image" would be wrong."""
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(100)
    (tmp_path / "IMG_0001.HEIC").write_bytes(heic)
    for source in (io.BytesIO(heic), tmp_path / "IMG_0001.HEIC"):
        with pytest.raises(ImageError, match="This is a HEIC/HEIF photo .* convert it to JPEG"):
            load_rgb(source)
    with pytest.raises(ImageError, match="not an image that can be read"):
        load_rgb(io.BytesIO(heic.replace(b"ftypheic", b"ftypqt  ")))  # a QuickTime movie


def test_the_pixel_limit_message_names_both_counts_exactly():
    """Rounded to megapixels, 8193x8192 read '67 megapixels; the limit is 67'."""
    with pytest.raises(ImageError, match=r"8193x8192 pixels \(67,117,056\), more than the limit of 67,108,864 \(8192x"):
        load_rgb(png_declaring(8193, 8192))


@pytest.mark.parametrize("width, height", [(1_000_000, 4), (4, 1_000_000), (21 * 50, 50)])
def test_extreme_aspect_ratio_is_refused_before_decoding(width, height):
    """A thin strip would be resized to a 256-pixel short side: 1,000,000x4 to 64,000,000x256."""
    with pytest.raises(
        ImageError, match=rf"{width}x{height} pixels: its long side is more than {MAX_ASPECT_RATIO} times"
    ):
        load_rgb(encoded(Image.new("RGB", (width, height)), "PNG"), min_size=256)


def test_panorama_at_the_aspect_ratio_limit_is_accepted():
    image = load_rgb(encoded(Image.new("RGB", (MAX_ASPECT_RATIO * 50, 50), (9, 8, 7)), "PNG"), min_size=256)
    assert image.size == (MAX_ASPECT_RATIO * 50, 50) and pixel(image) == (9, 8, 7)


def test_truncated_jpeg():
    data = encoded(Image.linear_gradient("L").convert("RGB"), "JPEG").getvalue()
    with pytest.raises(ImageError, match="damaged or truncated"):
        load_rgb(io.BytesIO(data[: len(data) // 2]))


@pytest.mark.parametrize("data", [np.random.default_rng(0).bytes(4096), b"pizza, steak or sushi?\n" * 50, b""])
def test_non_images(data):
    with pytest.raises(ImageError, match="not an image"):
        load_rgb(io.BytesIO(data))


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="No such file"):
        load_rgb(tmp_path / "missing.jpg")


def test_folder_instead_of_a_file(tmp_path):
    with pytest.raises(ImageError, match=f"Cannot read {tmp_path}: Is a directory"):
        load_rgb(tmp_path)


def test_a_path_through_a_file_is_a_path_problem_not_a_damaged_photo(tmp_path):
    (tmp_path / "notes.txt").write_text("not a folder")
    with pytest.raises(ImageError, match="Cannot read .*notes.txt/photo.jpg: Not a directory"):
        load_rgb(tmp_path / "notes.txt" / "photo.jpg")


def test_to_display_undoes_normalisation():
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    original = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    pixels = (torch.from_numpy(original).permute(2, 0, 1) / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(
        std
    ).view(3, 1, 1)
    assert np.abs(np.asarray(to_display(pixels, mean, std)).astype(int) - original).max() <= 1


def test_patch_grid_lays_patches_out_row_by_row_with_gaps():
    original = np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    grid = np.asarray(patch_grid(Image.fromarray(original), patch_size=16, gap=2))
    assert grid.shape == (4 * 18 - 2, 3 * 18 - 2, 3)
    row, column = 2, 1
    assert (grid[row * 18 : row * 18 + 16, column * 18 : column * 18 + 16] == original[32:48, 16:32]).all()
    assert (grid[16:18, :] == 255).all() and (grid[:, 34:36] == 255).all()


def test_attention_overlay_highlights_the_attended_patch():
    """Real attention weights are near 1/N (about 0.005 over 196 patches): the colours span the map's own range, or
    the most attended patch would look like the rest."""
    image = Image.new("RGB", (64, 64), (128, 128, 128))
    attention = torch.full((4, 4), 0.004)
    attention[1, 2] = 0.006
    overlay = np.asarray(attention_overlay(image, attention)).astype(int)
    brightness = overlay.sum(axis=2)
    assert overlay.shape == (64, 64, 3)
    assert brightness[16:32, 32:48].min() > brightness[:16, :].max() + 200
