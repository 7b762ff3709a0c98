"""The official CIFAR-10 batch files: their layout, a reader that runs no code, and a writer (--dataset fake, tests).

A batch file is a Python pickle, and a pickle can run any callable on load, so
these files are read with a restricted unpickler that resolves only what the
official files use; the loaded structure is then checked against the file's
size (no self-reference, no nested lists expanding past the bytes on disk)
before numpy builds anything from it. Every failure is a UserError naming the
file and saying what to do. The writers produce the same format, so the
synthetic set (--dataset fake) goes through the same reader.
"""

from __future__ import annotations

import io
import pickle
import shutil
from pathlib import Path

import numpy as np

from lab2.errors import UserError

# The official folder's layout and row format; the writers below write the same.
CIFAR10_FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SHAPE = (3, 32, 32)
ROW_BYTES = 3 * 32 * 32
MAX_CLASSES = 100_000  # as lab2-flops --num_classes


def _latin1_encode(text, encoding="latin1"):
    """`_codecs.encode` as Python 2 byte strings use it (latin-1 only): other codecs can expand bytes."""
    if not isinstance(text, str) or encoding.replace("-", "").replace("_", "").lower() != "latin1":
        raise pickle.UnpicklingError(f"refused _codecs.encode with codec {encoding!r}")
    return text.encode("latin1")


def _empty_bytes(*args):
    """`bytes()`: protocol 2 writes an empty byte string (an empty array's data) as a call with no arguments."""
    if args:  # bytes(n) would allocate n bytes the file never held
        raise pickle.UnpicklingError("refused bytes() with arguments")
    return b""


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals the official CIFAR batch files use.

    A pickle can name any callable (`os.system`, ...) and have it run on load; the
    official files only ever need numpy's array reconstruction and Python 2 byte
    strings (`_codecs.encode(text, 'latin1')`, and `bytes()` for an empty one), so
    anything else is refused before it can run. The byte-string helpers are
    restricted versions: no codec or argument can make more bytes than the file holds.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): None,
        ("numpy._core.multiarray", "_reconstruct"): None,
        ("numpy", "ndarray"): None,
        ("numpy", "dtype"): None,
        ("_codecs", "encode"): _latin1_encode,
        ("__builtin__", "bytes"): _empty_bytes,
        ("builtins", "bytes"): _empty_bytes,
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}")
        return self.ALLOWED[(module, name)] or super().find_class(module, name)


def check_structure(obj, max_elements: int, where: str) -> None:
    """Refuse containers that refer to themselves or expand past `max_elements` (a resource bomb).

    A pickle can hold one list many times by reference, so a few hundred bytes
    can describe 10**8 elements that numpy would then build. Containers are
    walked without recursion, counting every element each time it is reached;
    a real batch file never has more elements than bytes. ndarrays are leaves
    (their data are in the file), except object arrays, which are refused.
    """
    count, path_ids, stack = 0, set(), [(obj, False)]
    while stack:
        item, leaving = stack.pop()
        if leaving:
            path_ids.discard(id(item))
            continue
        count += 1
        if count > max_elements:
            raise UserError(
                f"{where} holds nested lists that expand to more elements than the file has bytes "
                f"(over {max_elements:,}); it is not a CIFAR-10 batch file, refusing it."
            )
        if isinstance(item, np.ndarray) and item.dtype == object:
            raise UserError(f"{where} holds an array of Python objects; CIFAR-10 batch files hold numbers only.")
        if isinstance(item, dict):
            children = [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if id(item) in path_ids:
            raise UserError(f"{where} holds a list or dict that refers to itself; it is not a CIFAR-10 batch file.")
        path_ids.add(id(item))
        stack.append((item, True))
        stack.extend((child, False) for child in children)


def _unpickle(path: Path) -> dict:
    """Load one CIFAR pickle safely, turning every failure into a UserError naming the file."""
    refetch = "Delete the folder and download it again, or point --data_dir at a good copy."
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}.") from None
    try:
        obj = _CifarUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        if "forbidden global" in str(exc):
            raise UserError(
                f"{path} asks to run code on load ({str(exc).removeprefix('forbidden ')}), which a CIFAR-10 file "
                f"never does; refusing it as unsafe. {refetch}"
            ) from None
        raise UserError(
            f"{path} is not a CIFAR-10 batch file ({exc}); it may be truncated or corrupt. {refetch}"
        ) from None
    except Exception as exc:  # EOFError, ValueError, UnicodeDecodeError, MemoryError...: all mean a broken file
        raise UserError(
            f"{path} is not a CIFAR-10 batch file ({type(exc).__name__}: {str(exc)[:200]}); "
            f"it may be truncated or corrupt. {refetch}"
        ) from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a CIFAR-10 batch dict. {refetch}")
    check_structure(obj, len(raw) + 64, str(path))
    return obj


def _labels_array(path: Path, labels, num_images: int) -> np.ndarray:
    """The labels as int64 (N,), with a message that says which rule they break."""
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1:
            raise UserError(
                f"{path}: 'labels' must be a flat list of class numbers, one per image; "
                f"got an array of shape {labels.shape}."
            )
        if not np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_:
            raise UserError(f"{path}: 'labels' must be whole numbers (class indices); got {labels.dtype} values.")
    elif isinstance(labels, (list, tuple)):
        odd = next((v for v in labels if isinstance(v, (list, tuple, np.ndarray))), None)
        if odd is not None:
            raise UserError(
                f"{path}: 'labels' must be a flat list of class numbers, one per image; "
                f"it holds nested {type(odd).__name__}s."
            )
        odd = next((v for v in labels if isinstance(v, bool) or not isinstance(v, (int, np.integer))), None)
        if odd is not None:
            raise UserError(
                f"{path}: 'labels' must be whole numbers (class indices); found {type(odd).__name__} {odd!r}."
            )
        labels = np.array(labels, dtype=np.int64) if labels else np.zeros(0, dtype=np.int64)
    else:
        raise UserError(f"{path}: 'labels' must be a list of class numbers, got {type(labels).__name__}.")
    if len(labels) != num_images:
        raise UserError(f"{path}: {num_images} images but {len(labels)} labels; the file is inconsistent.")
    return labels


def read_cifar_batch(path: str | Path, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Read one official-format batch file.

    Returns images as uint8 (N, 3, 32, 32) (the file's rows are 1,024 red, then
    green, then blue values, row-major) and labels as int64 (N,). Every check
    failure is a UserError naming the file and the problem; nothing is built
    before the structure has been checked against the file's size.
    """
    path = Path(path)
    batch = _unpickle(path)
    missing = [key for key in ("data", "labels") if key not in batch]
    if missing:
        raise UserError(f"{path} lacks the key(s) {missing}; a CIFAR-10 batch has 'data' and 'labels'.")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW_BYTES:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise UserError(f"{path}: 'data' must be uint8 of shape (N, {ROW_BYTES}), got {dtype} {shape}.")
    labels = _labels_array(path, batch["labels"], len(data))
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"{path}: labels must be integers in 0..{num_classes - 1}, found values outside that range.")
    return data.reshape(-1, *IMAGE_SHAPE), labels.astype(np.int64)


def read_class_names(folder: Path) -> tuple[str, ...]:
    """The class names from `folder`'s batches.meta, or CIFAR-10's ten when the folder has none."""
    meta = folder / META_FILE
    if not meta.exists():
        return CIFAR10_CLASSES
    names = _unpickle(meta).get("label_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise UserError(f"{meta}: 'label_names' must be a non-empty list of class names.")
    if len(names) > MAX_CLASSES:
        raise UserError(f"{meta}: 'label_names' lists {len(names):,} classes, more than lab2 trains ({MAX_CLASSES:,}).")
    return tuple(names)


# --------------------------------------------------------------------------- writing: the fake set and tests


def write_cifar_batch(path: str | Path, images: np.ndarray, labels, batch_label: str = "") -> None:
    """Write uint8 (N, 3, 32, 32) images and labels as one official-format batch (pickle protocol 2)."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    batch = {
        "batch_label": batch_label,
        "labels": [int(label) for label in labels],
        "data": images.reshape(len(images), ROW_BYTES),
        "filenames": [f"image_{i:05d}.png" for i in range(len(images))],
    }
    with open(path, "wb") as handle:
        pickle.dump(batch, handle, protocol=2)


def write_cifar10_folder(
    folder: str | Path,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    class_names=CIFAR10_CLASSES,
) -> Path:
    """Write a complete official-format folder: 5 training batches, test_batch and batches.meta."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chunks = np.array_split(np.arange(len(train_images)), len(TRAIN_FILES))
    for name, idx in zip(TRAIN_FILES, chunks, strict=True):
        write_cifar_batch(
            folder / name, train_images[idx], np.asarray(train_labels)[idx], f"training batch {name[-1]} of 5"
        )
    write_cifar_batch(folder / TEST_FILE, test_images, test_labels, "testing batch 1 of 1")
    with open(folder / META_FILE, "wb") as handle:
        pickle.dump(
            {"num_cases_per_batch": len(chunks[0]), "label_names": list(class_names), "num_vis": ROW_BYTES},
            handle,
            protocol=2,
        )
    return folder


def synthetic_images(num: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable synthetic 32x32 images: each class has its own colour and stripe pattern, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=num)
    class_rng = np.random.default_rng(1234)  # the class look is fixed; only the samples depend on `seed`
    colours = class_rng.uniform(40, 215, size=(num_classes, 3, 1, 1))
    frequencies = class_rng.uniform(0.2, 1.2, size=num_classes)
    angles = class_rng.uniform(0, np.pi, size=num_classes)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    images = np.empty((num, *IMAGE_SHAPE), dtype=np.uint8)
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        stripes = 40 * np.sin(frequencies[c] * (np.cos(angles[c]) * xx + np.sin(angles[c]) * yy))
        noise = rng.normal(0, 25, size=(len(members), *IMAGE_SHAPE))
        images[members] = np.clip(colours[c] + stripes + noise, 0, 255).astype(np.uint8)
    return images, labels


def _remove_partial_fake_set(folder: Path) -> None:
    """Delete a half-written fake set left by an interrupted run, but never a folder holding other files."""
    if not folder.exists():
        return
    foreign = (
        sorted(p.name for p in folder.iterdir() if p.name not in (*TRAIN_FILES, TEST_FILE, META_FILE))
        if folder.is_dir()
        else [folder.name]
    )
    if foreign:
        raise UserError(
            f"{folder} holds files lab2 did not write ({', '.join(foreign[:4])}); "
            "move them away or choose another --data_dir."
        )
    shutil.rmtree(folder)


def make_fake_cifar10(data_dir: str | Path, num_train: int, num_test: int, seed: int = 0) -> Path:
    """Write (once) a synthetic set in the official format under data_dir; return its folder."""
    folder = Path(data_dir) / f"lab2-fake-{num_train}-{num_test}-{seed}" / CIFAR10_FOLDER
    if not (folder / META_FILE).exists():  # batches.meta is written last: its presence means complete
        train = synthetic_images(num_train, 10, seed)
        test = synthetic_images(num_test, 10, seed + 1)
        # Written under a temporary name and renamed, so an interrupted run never leaves half a set.
        tmp = folder.with_name(folder.name + ".tmp")
        _remove_partial_fake_set(tmp)
        _remove_partial_fake_set(folder)
        write_cifar10_folder(tmp, *train, *test)
        tmp.rename(folder)
    return folder
