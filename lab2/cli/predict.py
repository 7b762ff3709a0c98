"""`lab2-predict`: top-k classes for image files (PNG/JPEG of any size, resized to 32x32).

    lab2-predict --model_path runs/<run> cat.png ship.jpg [--json] [--top_k 3] [--explain DIR]
    lab2-predict --model_path runs/<run> my_photos/     (every image file in the folder, by name)

An unreadable image gets an error line, the others are still predicted, and the exit status is 1. --explain
writes DIR/<image>.gradcam.png and replaces only the PNGs it wrote; folders given as input skip those.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lab2.data.cifar import CIFAR10_MEAN, CIFAR10_STD, test_transform
from lab2.errors import UserError, exit_with_user_error
from lab2.explain import gradcam
from lab2.flags import Parser, number_flag
from lab2.state.files import atomic_write
from lab2.state.model_file import MODEL_PATH_HELP, load_run_model, top_k

MAX_PIXELS = 64_000_000  # larger images are refused before decoding: a small file can decode to gigabytes
SOFTWARE = "lab2-predict --explain"  # the PNG text chunk that marks an overlay as lab2's own


def _to_8bit_rgb(image):
    """(RGB image, note or None): high-bit-depth grayscale is scaled to 8 bits, not clipped to white."""
    if image.mode not in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return image.convert("RGB"), None
    values = np.asarray(image, dtype=np.float64)
    finite = values[np.isfinite(values)]  # a float image has no fixed range: read it from the values, NaN/inf left out
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if image.mode != "F":  # 16 bits, or 32-bit integers beyond 16 bits
        low, high = 0.0, max(high, 65535.0)
        note = "16-bit grayscale scaled to 8 bits" if high == 65535.0 else "32-bit grayscale scaled by its maximum"
    elif low >= 0 and high <= 255:
        low, high = 0.0, 1.0 if high <= 1 else 255.0
        note = f"32-bit float grayscale read as 0..{high:g}"
    else:
        note = f"32-bit float grayscale scaled from its range {low:g}..{high:g}"
    gray = np.clip(np.nan_to_num((values - low) / ((high - low) or 1.0)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB"), note


def read_image(path: str) -> tuple[torch.Tensor, str | None]:
    """(the (3, 32, 32) tensor the test transform makes, conversion note or None) for any image file.
    Every failure (missing, not a file, unreadable, too large, a decompression bomb) is a UserError naming the file."""
    file = Path(path)
    if not file.is_file():  # a folder is one expand_folders found no image in; a FIFO would block the read
        problem = "a folder with no image files (PNG, JPEG, ...) in it" if file.is_dir() else "not a regular file"
        raise UserError(f"{path}: {problem if file.exists() else 'no such file'}.")
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
    return test_transform()(image.resize((32, 32), Image.Resampling.BILINEAR)), note  # a copy when already 32x32


def _overlay_of_ours(path: Path) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with Image.open(path) as image:
            return image.format == "PNG" and image.info.get("Software") == SOFTWARE
    except Exception:  # any unreadable file is simply not one of ours
        return False


def expand_folders(paths: list[str]) -> list[str]:
    """`paths` with each folder replaced by the image files directly in it, sorted, without hidden files and the
    overlays --explain wrote (`--explain DIR DIR` predicted its own overlays the next time). A folder without any
    stays as it is, so reading it reports the problem."""
    extensions = Image.registered_extensions()  # lower case, as PIL registers them
    expanded = []
    for path in paths:
        folder, images = Path(path), []
        if folder.is_dir():
            images = sorted(
                str(f)
                for f in folder.iterdir()
                if f.suffix.lower() in extensions and not f.name.startswith(".") and f.is_file()
                if not (f.name.endswith(".gradcam.png") and _overlay_of_ours(f))
            )
        expanded.extend(images or [path])
    return expanded


def plan_overlays(folder: Path, image_paths: list[str]) -> dict[str, Path]:
    """The --explain file of each image, checked before anything is written: each is new, or one lab2 wrote."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--explain {folder} is a file; give a folder for the Grad-CAM images.")
    targets, taken = {}, set()
    for path in image_paths:
        name, copy = f"{Path(path).name}.gradcam.png", 1
        while name in taken:  # cat.png from two folders: cat.png.gradcam.png, then cat.png-2.gradcam.png
            copy += 1
            name = f"{Path(path).name}-{copy}.gradcam.png"
        taken.add(name)
        targets.setdefault(path, folder / name)
    foreign = [t for t in targets.values() if (t.exists() or t.is_symlink()) and not _overlay_of_ours(t)]
    if foreign:
        raise UserError(
            f"--explain: {foreign[0]} exists and lab2 did not write it; lab2-predict never replaces it. "
            "Choose another --explain folder or move the file."
        )
    return targets


def write_overlay(target: Path, model, image: torch.Tensor, top: list[dict], top_index: int, title: str) -> None:
    """`image` (normalised) with its Grad-CAM for class `top_index`, beside the bars of `top`, written to `target`."""
    heatmap = gradcam.gradcam_heatmaps(model, image[None], targets=[top_index])[0]
    mean, std = torch.tensor(CIFAR10_MEAN).view(3, 1, 1), torch.tensor(CIFAR10_STD).view(3, 1, 1)
    shown = ((image * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    classes, probabilities = [t["class"] for t in top], [t["probability"] for t in top]
    fig = gradcam.explain_image_figure(np.ascontiguousarray(shown), heatmap, classes, probabilities, title=title)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda tmp: fig.savefig(tmp, format="png", dpi=100, metadata={"Software": SOFTWARE}))
    except OSError as exc:
        raise UserError(f"cannot write {target} ({exc.strerror}); choose another --explain folder.") from None


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="lab2-predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", required=True, help=MODEL_PATH_HELP)
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...) or folders of them")
    parser.add_argument("--top_k", type=number_flag("--top_k", minimum=1, maximum=1000), default=3, help="per image")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--explain", metavar="DIR", help="also write DIR/<image>.gradcam.png: Grad-CAM, top classes")
    args = parser.parse_args(argv)
    results = []
    try:
        loaded = load_run_model(args.model_path)
        paths = expand_folders(args.images)
        overlays = plan_overlays(Path(args.explain), paths) if args.explain else {}
        for path in paths:
            try:
                image, note = read_image(path)
            except UserError as error:  # one bad file never stops the others
                print(f"lab2-predict: error: {error}", file=sys.stderr)
                results.append({"image": path, "error": str(error)})
                continue
            probs, indices = (t[0].tolist() for t in top_k(loaded.model, image[None], args.top_k))
            top = [{"class": loaded.class_names[i], "probability": p} for p, i in zip(probs, indices, strict=True)]
            results.append({"image": path, "top_k": top, **({"note": note} if note else {})})
            if path in overlays:
                write_overlay(overlays[path], loaded.model, image, top, indices[0], Path(path).name)
                results[-1]["explanation"] = str(overlays[path])
            if not args.json:
                line = f"{path}: " + ", ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in top)
                line += f" ({note})" if note else ""
                print(line + (f" -> {overlays[path]}" if path in overlays else ""))
    except UserError as error:  # the model, the --explain folder, or an overlay it cannot write: nothing more to do
        exit_with_user_error(error, "lab2-predict")
    if args.json:
        print(json.dumps(results, indent=2))
    sys.exit(1 if any("error" in r for r in results) else 0)


if __name__ == "__main__":
    main()
