"""From a 12-megapixel phone JPEG to the model's input tensor: full decode against the reduced-size
(JPEG draft mode) decode that images.load_rgb does when given the size the transforms need; also
how much the model input and the predicted probabilities change between the two.

    python benchmarks/decode.py                      # about 30 s
    python benchmarks/decode.py --photo my.jpg --repeats 20
"""

import argparse
from pathlib import Path

from common import interleaved_ms, load_benchmark_classifier, median, print_machine, print_table, save_results

from PIL import Image, ImageOps

from images import load_rgb
from inference import Predictor, calibration_images
from tests.standins import twelve_megapixel_jpeg


def pillow_full_decode(path: Path) -> Image.Image:
    """What a plain Pillow pipeline does: decode every pixel, then orient and convert."""
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--photo", type=Path, help="a large JPEG (default: a generated 12 MP photo, standins.twelve_megapixel_jpeg)"
    )
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    args.photo = args.photo or twelve_megapixel_jpeg()
    print_machine()

    model, transforms, _ = load_benchmark_classifier()
    resize = transforms.resize_size[0]
    decoders = {
        "Pillow full decode": lambda: pillow_full_decode(args.photo),
        "images.load_rgb, full decode": lambda: load_rgb(args.photo),
        f"images.load_rgb(min_size={resize}), draft": lambda: load_rgb(args.photo, min_size=resize),
    }
    decode_ms = interleaved_ms(decoders, args.repeats)
    to_input_ms = interleaved_ms(
        {name: (lambda d=decode: transforms(d())) for name, decode in decoders.items()}, args.repeats
    )

    with Image.open(args.photo) as image:
        stored = image.size
    sizes = {name: decode().size for name, decode in decoders.items()}
    reference = median(to_input_ms["Pillow full decode"])
    print(
        f"{args.photo.name}: {stored[0]}x{stored[1]} stored, {args.photo.stat().st_size / 1e6:.1f} MB; "
        f"median of {args.repeats} interleaved runs"
    )
    print_table(
        ["decoder", "decoded size", "decode ms", "decode + transforms ms", "speed-up (to input)"],
        [
            [
                name,
                f"{sizes[name][0]}x{sizes[name][1]}",
                median(decode_ms[name]),
                median(to_input_ms[name]),
                f"{reference / median(to_input_ms[name]):.2f}x",
            ]
            for name in decoders
        ],
    )
    uses_draft = sizes[f"images.load_rgb(min_size={resize}), draft"] != sizes["images.load_rgb, full decode"]
    print(f"images.load_rgb uses draft mode for this JPEG: {'yes' if uses_draft else 'NO'}")

    full = transforms(load_rgb(args.photo)).unsqueeze(0)
    draft = transforms(load_rgb(args.photo, min_size=resize)).unsqueeze(0)
    predictor = Predictor(model, calibration=calibration_images(transforms))
    probabilities = {name: predictor(x).softmax(-1)[0] for name, x in (("full", full), ("draft", draft))}
    pixel_difference = (full - draft).abs()
    print(
        f"model input, draft vs full decode: mean |difference| {pixel_difference.mean():.4f}, "
        f"max {pixel_difference.max():.3f} (normalised units); probabilities full "
        f"{probabilities['full'].numpy().round(4)}, draft {probabilities['draft'].numpy().round(4)}"
    )
    save_results(
        "decode",
        {
            "photo": str(args.photo),
            "stored_size": stored,
            "decoded_sizes": sizes,
            "uses_draft": uses_draft,
            "decode_ms": decode_ms,
            "to_input_ms": to_input_ms,
            "probability_difference": (probabilities["full"] - probabilities["draft"]).abs().max().item(),
        },
    )


if __name__ == "__main__":
    main()
