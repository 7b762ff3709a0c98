"""`lab2-predict`: top-k classes for image files (PNG/JPEG of any size, resized to 32x32).

    lab2-predict --model_path runs/<run> cat.png ship.jpg [--json] [--top_k 3] [--explain DIR]
    lab2-predict --model_path runs/<run> my_photos/     (every image file in the folder, by name)

An unreadable image gets an error line and the others are still predicted;
the exit status is 1 when any image failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from lab2.cli.explain_images import ExplanationWriter
from lab2.data.cifar import test_transform
from lab2.errors import UserError, exit_with_user_error
from lab2.flags import Parser, number_flag
from lab2.state.model_file import load_model_file, top_k

MAX_PIXELS = 64_000_000  # larger images are refused before decoding: a small file can decode to gigabytes


def _to_8bit_rgb(image):
    """(RGB image, note or None): high-bit-depth grayscale is scaled to 8 bits, not clipped to white."""
    import numpy as np
    from PIL import Image

    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        low = 0.0
        if image.mode == "F":  # 32-bit float: no fixed range, so read it from the values (NaN/inf left out)
            finite = values[np.isfinite(values)]
            low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
            if low >= 0 and high <= 1:
                low, scale, note = 0.0, 1.0, "32-bit float grayscale read as 0..1"
            elif low >= 0 and high <= 255:
                low, scale, note = 0.0, 255.0, "32-bit float grayscale read as 0..255"
            else:
                scale, note = (high - low) or 1.0, f"32-bit float grayscale scaled from its range {low:g}..{high:g}"
        elif image.mode == "I" and values.size and values.max() > 65535:
            scale, note = float(values.max()), "32-bit grayscale scaled by its maximum"
        else:
            scale, note = 65535.0, "16-bit grayscale scaled to 8 bits"
        gray = np.clip(np.nan_to_num((values - low) / scale) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB"), note
    return image.convert("RGB"), None


def read_image(path: str) -> tuple[torch.Tensor, str | None]:
    """(normalised (3, 32, 32) tensor as the seed's test transform makes it, conversion note or None)
    for any image file.

    Every failure (missing, not a file, unreadable, too large, a decompression bomb) is a UserError naming the file.
    """
    from PIL import Image

    file = Path(path)
    if not file.exists():
        raise UserError(f"{path}: no such file.")
    if file.is_dir():  # expand_folders found no image in it
        raise UserError(f"{path}: a folder with no image files (PNG, JPEG, ...) in it.")
    if not file.is_file():  # a FIFO that would block the read, a device
        raise UserError(f"{path}: not a regular file.")
    try:
        with Image.open(file) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise UserError(
                    f"{path}: {width}x{height} pixels is more than lab2-predict reads ({MAX_PIXELS:,}); "
                    "shrink it first."
                )
            image.draft("RGB", (32, 32))  # JPEG: decode at a reduced size when it can
            image, note = _to_8bit_rgb(image)
    except UserError:
        raise
    except Exception as exc:  # PIL raises many types (OSError, DecompressionBombError, ValueError, SyntaxError...)
        raise UserError(f"{path}: not a readable image ({type(exc).__name__}: {str(exc)[:120]}).") from None
    if image.size != (32, 32):
        image = image.resize((32, 32), Image.Resampling.BILINEAR)
    return test_transform()(image), note


def expand_folders(paths: list[str]) -> list[str]:
    """`paths` with each folder replaced by the image files directly in it (sorted; names PIL knows how to read,
    hidden files skipped). A folder without any stays as it is, so reading it reports the problem."""
    from PIL import Image

    extensions = {ext.lower() for ext in Image.registered_extensions()}
    expanded = []
    for path in paths:
        folder = Path(path)
        images = []
        if folder.is_dir():
            images = sorted(
                str(f)
                for f in folder.iterdir()
                if f.suffix.lower() in extensions and not f.name.startswith(".") and f.is_file()
            )
        expanded.extend(images or [path])
    return expanded


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="lab2-predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model_path", required=True, help="a run folder, its model.safetensors, or the course lab's model_final.pth"
    )
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...) or folders of them")
    parser.add_argument(
        "--top_k", type=number_flag("--top_k", minimum=1, maximum=1000), default=3, help="classes to show per image"
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument(
        "--explain",
        metavar="DIR",
        default=None,
        help="also write DIR/<image>.gradcam.png: the image with its Grad-CAM heat map beside its top classes",
    )
    args = parser.parse_args(argv)
    try:
        loaded = load_model_file(args.model_path)
        explainer = ExplanationWriter(args.explain, args.images) if args.explain else None
    except UserError as error:
        exit_with_user_error(error, "lab2-predict")
    results, failed = [], 0
    for path in expand_folders(args.images):
        try:
            image, note = read_image(path)
        except UserError as error:  # one bad file never stops the others
            failed += 1
            print(f"lab2-predict: error: {error}", file=sys.stderr)
            results.append({"image": path, "error": str(error)})
            continue
        probabilities, indices = top_k(loaded.model, image[None], args.top_k)
        top = [
            {"class": loaded.class_names[i], "probability": float(p)}
            for p, i in zip(probabilities[0], indices[0], strict=True)
        ]
        results.append({"image": path, "top_k": top, **({"note": note} if note else {})})
        if explainer is not None:
            try:
                explained = explainer.write(loaded.model, path, image, top, int(indices[0, 0]))
            except UserError as error:  # a model Grad-CAM cannot explain, or a full disk: say so and stop
                exit_with_user_error(error, "lab2-predict")
            results[-1]["explanation"] = str(explained)
        if not args.json:
            print(
                f"{path}: "
                + ", ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in top)
                + (f" ({note})" if note else "")
                + (f" -> {results[-1]['explanation']}" if explainer is not None else "")
            )
    if args.json:
        print(json.dumps(results, indent=2))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
