"""`lab2-predict --explain DIR`: one PNG per input image, its Grad-CAM overlay beside its top-k classes.

The files go into DIR, never beside the inputs (a folder of images would
otherwise grow overlays that the next run reads as inputs). lab2 writes a new
file, or replaces one it wrote itself: each PNG carries a `Software` text chunk
naming lab2-predict, and a file without it is refused, before anything is
written.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from lab2.data.cifar import CIFAR10_MEAN, CIFAR10_STD
from lab2.errors import UserError
from lab2.explain import gradcam

SOFTWARE = "lab2-predict --explain"  # the PNG text chunk that marks a file as lab2's own


def _written_by_lab2(path: Path) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.format == "PNG" and image.info.get("Software") == SOFTWARE
    except Exception:  # any unreadable file is simply not one of ours
        return False


class ExplanationWriter:
    """Plans one output file per input image up front, refuses a folder it may not write into, then writes."""

    def __init__(self, folder: str | Path, image_paths: list[str]):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise UserError(f"--explain {self.folder} is a file; give a folder for the Grad-CAM images.")
        self.targets: dict[str, Path] = {}
        taken: set[str] = set()
        for path in image_paths:
            name, copy = f"{Path(path).name}.gradcam.png", 1
            while name in taken:  # cat.png from two folders: cat.png.gradcam.png, then cat.png-2.gradcam.png
                copy += 1
                name = f"{Path(path).name}-{copy}.gradcam.png"
            taken.add(name)
            self.targets.setdefault(path, self.folder / name)
        foreign = [t for t in self.targets.values() if (t.exists() or t.is_symlink()) and not _written_by_lab2(t)]
        if foreign:
            raise UserError(
                f"--explain: {foreign[0]} exists and lab2 did not write it; lab2-predict never replaces it. "
                "Choose another --explain folder or move the file."
            )

    def write(self, model, image_path: str, image: torch.Tensor, top: list[dict], top_index: int) -> Path:
        """Grad-CAM of `image` (normalised (3, H, W)) for its top class `top_index`, beside the top-k bars
        (`top`: lab2-predict's records, most likely first); returns the file written."""
        heatmap = gradcam.gradcam_heatmaps(model, image[None], targets=[top_index])[0]
        mean, std = torch.tensor(CIFAR10_MEAN).view(3, 1, 1), torch.tensor(CIFAR10_STD).view(3, 1, 1)
        shown = ((image * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        fig = gradcam.explain_image_figure(
            np.ascontiguousarray(shown),
            heatmap,
            [t["class"] for t in top],
            [t["probability"] for t in top],
            title=Path(image_path).name,
        )
        target = self.targets[image_path]
        tmp = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            # A fresh temporary name (never a file of the user's), renamed into place: no half-written PNG.
            handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=self.folder)
            tmp = Path(name)
            with os.fdopen(handle, "wb") as file:
                fig.savefig(file, format="png", dpi=100, metadata={"Software": SOFTWARE})
            os.chmod(tmp, 0o644)
            tmp.replace(target)
        except OSError as exc:
            raise UserError(f"cannot write {target} ({exc.strerror}); choose another --explain folder.") from None
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)  # already renamed when all went well
        return target
