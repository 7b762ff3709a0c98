"""`lab2-predict`: top-k classes for image files (PNG/JPEG of any size, resized to 32x32).

    lab2-predict --model_path runs/<run> cat.png ship.jpg [--json] [--top_k 3]

An unreadable image gets an error line and the others are still predicted;
the exit status is 1 when any image failed.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from lab2.data import test_transform
from lab2.errors import UserError, exit_with_user_error
from lab2.flag_types import Parser, int_flag
from lab2.inference import load_exported_model, top_k


def read_image(path: str) -> torch.Tensor:
    """A normalised (3, 32, 32) tensor, as the seed's test transform makes it, from any image file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file.") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"{path}: not a readable image ({exc}).") from None
    if image.size != (32, 32):
        image = image.resize((32, 32), Image.Resampling.BILINEAR)
    return test_transform()(image)


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="lab2-predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", required=True, help="a run folder or its model.safetensors")
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    parser.add_argument("--top_k", type=int_flag("--top_k", minimum=1, maximum=1000), default=3, help="classes to show per image")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args(argv)
    try:
        loaded = load_exported_model(args.model_path)
    except UserError as error:
        exit_with_user_error(error, "lab2-predict")
    results, failed = [], 0
    for path in args.images:
        try:
            image = read_image(path)
        except UserError as error:
            failed += 1
            print(f"lab2-predict: error: {error}", file=sys.stderr)
            results.append({"image": path, "error": str(error)})
            continue
        probabilities, indices = top_k(loaded.model, image[None], args.top_k)
        top = [{"class": loaded.class_names[i], "probability": float(p)} for p, i in zip(probabilities[0], indices[0])]
        results.append({"image": path, "top_k": top})
        if not args.json:
            print(f"{path}: " + ", ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in top))
    if args.json:
        print(json.dumps(results, indent=2))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
