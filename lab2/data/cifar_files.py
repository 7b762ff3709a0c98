"""The official CIFAR-10 batch files: their layout, a reader that runs no code, and a writer (--dataset fake, tests).

A batch file is a pickle, which can call any function it names while it loads. The reader's unpickler maps the few
names batch files use to stand-ins of its own and refuses every other name before anything runs. numpy's own
constructors never see the file's arguments (they allocate any shape stated, and crash on some object arrays):
`_Array` hands numpy a plain dtype of lab2's making, a shape and the file's bytes, which must fill it. The values
are then checked as data ('data' uint8 (N, 3072), 'labels' N class numbers read one by one, so a small file cannot
expand); every failure is one UserError naming the file and what to do.
"""

from __future__ import annotations

import io
import pickle
import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from lab2.errors import UserError

CIFAR10_FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SHAPE = (3, 32, 32)
ROW_BYTES = 3 * 32 * 32
MAX_CLASSES = 100_000  # as lab2-flops --num_classes
REFETCH = "Delete the folder and download it again, or point --data_dir at a good copy."


class _Dtype:
    """`numpy.dtype(name, align, copy)`, then its byte order from the pickled state: plain numbers only."""

    def __init__(self, name, align=False, copy=False):
        self.dtype = np.dtype(name) if isinstance(name, str) else None
        if self.dtype is None or self.dtype.kind not in "biuf":  # no objects, records, strings or sub-arrays
            raise pickle.UnpicklingError(f"refused dtype {name!r}: CIFAR-10 batch files hold plain numbers")

    def __setstate__(self, state):
        if state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])


class _Array:
    """A pickled array (`_reconstruct(ndarray, (0,), 'b')`, then its state), built by `array()` after the load."""

    def __init__(self, *args):
        self.state = None

    def __setstate__(self, state):
        self.state = state

    def array(self) -> np.ndarray:
        shape, dtype, fortran, raw = self.state[-4:]  # numpy writes (version, shape, dtype, is_fortran, bytes)
        if not isinstance(dtype, _Dtype):
            raise ValueError("an array without a dtype")
        if isinstance(raw, str):  # Python 2's byte strings, read with encoding="latin1"
            raw = raw.encode("latin1")
        # numpy's own set-up, given a plain dtype of lab2's making: it checks that the bytes fill the shape
        # before anything is allocated, and keeps them as the (writable) array's memory, without a copy.
        array = np.ndarray((0,), np.uint8)
        array.__setstate__((shape, dtype.dtype, bool(fortran), raw))
        return array


def _latin1(text, codec):
    """`_codecs.encode` as protocol 2 stores bytes: latin-1, one byte per character (another codec can expand)."""
    if codec not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused _codecs.encode with codec {codec!r}")
    return text.encode("latin1")


class _Unsafe(Exception):
    """A name outside the allowed ones: a pickle that would run code."""


class _BatchUnpickler(pickle.Unpickler):
    """Resolves the names CIFAR-10 batch files use to the stand-ins above, and no other name at all."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _Array,  # numpy < 2
        ("numpy._core.multiarray", "_reconstruct"): _Array,
        ("numpy", "ndarray"): _Array,  # _reconstruct's first argument; calling it builds nothing
        ("numpy", "dtype"): _Dtype,
        ("_codecs", "encode"): _latin1,
        ("__builtin__", "bytes"): lambda: b"",  # empty bytes are written as bytes(); bytes(n) would allocate n
        ("builtins", "bytes"): lambda: b"",
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise _Unsafe(f"global {module}.{name}")
        return self.ALLOWED[module, name]


def _unpickle(path: Path) -> dict:
    """One batch file's dict, its arrays built; every failure a UserError naming the file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}.") from None
    try:
        # From memory, not the open file: a string whose length field points past the end of the file then
        # reads what is there, where file.read(length) would first allocate that many bytes.
        batch = _BatchUnpickler(io.BytesIO(raw), encoding="latin1").load()
        if isinstance(batch, dict):
            batch = {key: value.array() if isinstance(value, _Array) else value for key, value in batch.items()}
    except _Unsafe as exc:
        raise UserError(
            f"{path} asks to run code on load ({exc}), which a CIFAR-10 file never does; refusing it as unsafe. "
            f"{REFETCH}"
        ) from None
    except Exception as exc:  # EOFError, UnpicklingError, ValueError, MemoryError...: all mean a broken file
        raise UserError(
            f"{path} is not a CIFAR-10 batch file ({type(exc).__name__}: {str(exc)[:200]}); "
            f"it may be truncated or corrupt. {REFETCH}"
        ) from None
    if not isinstance(batch, dict):
        raise UserError(f"{path} holds a {type(batch).__name__}, not a CIFAR-10 batch dict. {REFETCH}")
    return batch


def _labels(path: Path, labels, num_classes: int) -> np.ndarray:
    """'labels' as int64 (N,): a 1-D integer array, or a flat list read element by element (never built nested)."""
    flat, whole = "'labels' must be a flat list of class numbers, one per image", "'labels' must be whole numbers"
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1:
            raise UserError(f"{path}: {flat}; got an array of shape {labels.shape}.")
        if labels.dtype.kind not in "iu":
            raise UserError(f"{path}: {whole} (class indices); got {labels.dtype} values.")
    elif isinstance(labels, (list, tuple)):
        at = next((i for i, v in enumerate(labels) if type(v) is not int), None)  # bool too: a subclass of int
        odd = labels[at] if at is not None else 0
        if isinstance(odd, (list, tuple, dict, np.ndarray)):
            raise UserError(f"{path}: {flat}; it holds nested {type(odd).__name__}s.")
        if at is not None:
            raise UserError(f"{path}: {whole} (class indices); found {type(odd).__name__} {_short_repr(odd)}.")
        labels = np.array([v if 0 <= v < num_classes else -1 for v in labels], dtype=np.int64)  # -1: out of range
    else:
        raise UserError(f"{path}: 'labels' must be a list of class numbers, got {type(labels).__name__}.")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"{path}: labels must be integers in 0..{num_classes - 1}, found values outside that range.")
    return labels.astype(np.int64)


def read_cifar_batch(path: str | Path, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """One batch file as uint8 images (N, 3, 32, 32) and int64 labels (N,); a row is 1,024 red, then green,
    then blue values, row-major."""
    path = Path(path)
    batch = _unpickle(path)
    missing = [key for key in ("data", "labels") if key not in batch]
    if missing:
        raise UserError(f"{path} lacks the key(s) {missing}; a CIFAR-10 batch has 'data' and 'labels'.")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW_BYTES:
        shape, dtype = getattr(data, "shape", None), getattr(data, "dtype", type(data).__name__)
        raise UserError(f"{path}: 'data' must be uint8 of shape (N, {ROW_BYTES}), got {dtype} {shape}.")
    labels = _labels(path, batch["labels"], num_classes)
    if len(labels) != len(data):
        raise UserError(f"{path}: {len(data)} images but {len(labels)} labels; the file is inconsistent.")
    return data.reshape(-1, *IMAGE_SHAPE), labels


def read_class_names(folder: Path) -> tuple[str, ...]:
    """The class names from `folder`'s batches.meta, or CIFAR-10's ten when the folder has none."""
    meta = folder / META_FILE
    if not meta.exists():
        return CIFAR10_CLASSES
    names = _unpickle(meta).get("label_names")
    if not isinstance(names, (list, tuple)) or not names:
        raise UserError(f"{meta}: 'label_names' must be a non-empty list of class names.")
    if len(names) > MAX_CLASSES:
        raise UserError(f"{meta}: 'label_names' lists {len(names):,} classes, more than lab2 trains ({MAX_CLASSES:,}).")
    return check_class_names(names, f"{meta}'s 'label_names'")


def check_class_names(names, source: str) -> tuple[str, ...]:
    """`names` if they are distinct, non-empty strings on one line, else one UserError naming `source`: results are
    keyed by class name (summary.json's class_accuracy, the figures), so a duplicate would silently lose a class, and
    a line break would split lab2-eval's table."""
    bad = [i for i, name in enumerate(names) if not isinstance(name, str) or not name.strip() or not name.isprintable()]
    if bad:
        raise UserError(
            f"{source}: class {bad[0]}'s name is {_short_repr(names[bad[0]])}; every class name must be a non-empty "
            "string on one line, without control characters: fix the names there (one per class, in class order)."
        )
    twice = [name for name, count in Counter(names).items() if count > 1][:3]
    classes = {name: ", ".join(str(i) for i, n in enumerate(names) if n == name) for name in twice}
    if twice:
        raise UserError(
            f"{source} names a class more than once: {', '.join(f'{n!r:.60} (classes {classes[n]})' for n in twice)}; "
            "results are reported by class name, so give each class its own name there."
        )
    return tuple(names)


def write_cifar_batch(path: str | Path, images: np.ndarray, labels, batch_label: str = "") -> None:
    """Write uint8 (N, 3, 32, 32) images and labels as one official-format batch (pickle protocol 2)."""
    data = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), ROW_BYTES)
    names = [f"image_{i:05d}.png" for i in range(len(images))]
    batch = {"batch_label": batch_label, "labels": [int(label) for label in labels], "data": data, "filenames": names}
    Path(path).write_bytes(pickle.dumps(batch, protocol=2))


def write_cifar10_folder(
    folder: str | Path, train_images, train_labels, test_images, test_labels, class_names=CIFAR10_CLASSES
) -> Path:
    """Write a complete official-format folder: 5 training batches, test_batch and batches.meta (last)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chunks = np.array_split(np.arange(len(train_images)), len(TRAIN_FILES))
    for name, idx in zip(TRAIN_FILES, chunks, strict=True):
        label = f"training batch {name[-1]} of 5"
        write_cifar_batch(folder / name, train_images[idx], np.asarray(train_labels)[idx], label)
    write_cifar_batch(folder / TEST_FILE, test_images, test_labels, "testing batch 1 of 1")
    meta = {"num_cases_per_batch": len(chunks[0]), "label_names": list(class_names), "num_vis": ROW_BYTES}
    (folder / META_FILE).write_bytes(pickle.dumps(meta, protocol=2))
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


def make_fake_cifar10(data_dir: str | Path, num_train: int, num_test: int, seed: int = 0) -> Path:
    """Write (once) a synthetic set in the official format under data_dir; return its folder. It is written under a
    temporary name and renamed, so an interrupted run never leaves half a set; a half-written one left by an older
    run is deleted, but never a folder holding files lab2 did not write."""
    folder = Path(data_dir) / f"lab2-fake-{num_train}-{num_test}-{seed}" / CIFAR10_FOLDER
    if (folder / META_FILE).exists():  # batches.meta is written last: its presence means complete
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    ours = (*TRAIN_FILES, TEST_FILE, META_FILE)
    for partial in (p for p in (tmp, folder) if p.exists()):
        foreign = (
            [partial.name] if not partial.is_dir() else sorted(p.name for p in partial.iterdir() if p.name not in ours)
        )
        if foreign:
            raise UserError(
                f"{partial} holds files lab2 did not write ({', '.join(foreign[:4])}); "
                "move them away or choose another --data_dir."
            )
        shutil.rmtree(partial)
    write_cifar10_folder(tmp, *synthetic_images(num_train, 10, seed), *synthetic_images(num_test, 10, seed + 1))
    return tmp.rename(folder)


def _short_repr(value) -> str:
    """A value's repr for a message, cut to 60 characters; a nest too deep to print is named, not printed."""
    try:
        return f"{value!r:.60}"
    except RecursionError:
        return "(nested too deep to show)"
