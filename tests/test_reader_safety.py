"""The CIFAR batch reader against hostile and odd files (issue 11, section 5): resource bombs,
self-referencing structures, lab2's own tiny fake sets, and wrong label shapes or types."""

import pickle
import tracemalloc

import numpy as np
import pytest

from lab2.data.cifar import read_cifar10_folder
from lab2.data.cifar_files import make_fake_cifar10, read_cifar_batch
from lab2.errors import UserError


def _write(path, batch):
    path.write_bytes(pickle.dumps(batch, protocol=2))
    return path


def _images(n):
    return np.zeros((n, 3072), dtype=np.uint8)


def _refused_within(path, match, limit_bytes):
    """read_cifar_batch(path) is a UserError matching `match`, allocating less than `limit_bytes` on the way."""
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match=match):
            read_cifar_batch(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit_bytes, f"reading {path.stat().st_size:,} bytes peaked at {peak / 2**20:.0f} MiB"


def test_shared_nested_lists_are_refused_before_they_expand(tmp_path):
    level = list(range(10))
    for _ in range(7):  # 10**8 labels from a few hundred bytes: each level holds 10 references to the one below
        level = [level] * 10
    path = _write(tmp_path / "bomb", {"data": _images(10), "labels": level})
    assert path.stat().st_size < 40_000
    _refused_within(path, "must be a flat list", 32 * 2**20)  # at its first element: nothing nested is walked


def test_a_self_referencing_structure_is_refused(tmp_path):
    loop = [1, 2]
    loop.append(loop)
    path = _write(tmp_path / "loop", {"data": _images(3), "labels": loop})
    _refused_within(path, "must be a flat list", 32 * 2**20)


RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy's _reconstruct, whichever module holds it


class _Reduce:
    """Pickles as `function(*args)`, then BUILD with `state` when given: what a hostile file can write."""

    def __init__(self, function, args, state=None):
        self.reduced = (function, args) if state is None else (function, args, state)

    def __reduce__(self):
        return self.reduced


@pytest.mark.parametrize(
    "data",
    [
        _Reduce(np.ndarray, ((4 * 10**9,), "b")),  # numpy.ndarray(shape) would allocate 4 GB
        _Reduce(RECONSTRUCT, (np.ndarray, (4 * 10**9,), "b")),  # so would numpy's _reconstruct(ndarray, shape)
        _Reduce(RECONSTRUCT, (np.ndarray, (10**8,), "O")),  # and of objects it writes 800 MB of None pointers
        _Reduce(RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, (4 * 10**9,), np.dtype("u1"), False, b"x")),
    ],
    ids=["ndarray-call", "reconstruct-shape", "reconstruct-objects", "state-shape"],
)
def test_an_array_shape_the_file_does_not_fill_allocates_nothing(tmp_path, data):
    path = _write(tmp_path / "big", {"data": data, "labels": []})
    assert path.stat().st_size < 400
    _refused_within(path, "not a CIFAR-10 batch file", 8 * 2**20)


def test_an_array_of_python_objects_is_refused_without_crashing(tmp_path):
    # numpy's own set-up of this state (an object array longer than its list) crashes the interpreter.
    state = (1, (10**6,), np.dtype("O"), False, [1])
    path = _write(tmp_path / "objects", {"data": _Reduce(RECONSTRUCT, (np.ndarray, (0,), b"b"), state), "labels": []})
    _refused_within(path, "plain numbers", 8 * 2**20)


def test_codec_chains_cannot_blow_up(tmp_path):
    # _codecs.encode is allowed (Python 2 byte strings); nesting it with an expanding codec must not be.
    class Hex:  # each level doubles the bytes: 24 levels turn 2 bytes into 32 MiB
        def __init__(self, depth):
            self.depth = depth

        def __reduce__(self):
            inner = Hex(self.depth - 1) if self.depth else "ab"
            return (__import__("_codecs").encode, (inner, "hex_codec" if self.depth else "latin1"))

    path = tmp_path / "hex"
    path.write_bytes(pickle.dumps({"data": Hex(24), "labels": []}, protocol=2))
    _refused_within(path, "hex_codec", 8 * 2**20)


@pytest.mark.parametrize("train, test", [(3, 1), (1, 1), (7, 2)])
def test_lab2_reads_its_own_tiny_fake_sets(tmp_path, train, test):
    """Fewer than 5 training images leave some batch files empty: protocol 2 writes empty bytes as bytes()."""
    splits = read_cifar10_folder(make_fake_cifar10(tmp_path, train, test))
    assert (len(splits.train_labels), len(splits.test_labels)) == (train, test)


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.zeros((4, 1), dtype=np.int64), "must be a flat list"),
        ([[0], [1], [2], [3]], "must be a flat list"),
        ([0.0, 1.5, 2.0, 3.0], "must be whole numbers"),
        (np.array([0.0, 1.0, 2.0, 3.0]), "must be whole numbers"),
        ([True, False, True, False], "must be whole numbers"),
        ([0, 1, "2", 3], "must be whole numbers"),
        ([0, None, 2, 3], "found NoneType None"),  # found by a reader: None once meant 'nothing odd found'
        ([0, 1, 2, 10], "0..9"),
    ],
    ids=[
        "2d-array",
        "nested-list",
        "float-list",
        "float-array",
        "bool-list",
        "text-label",
        "none-label",
        "out-of-range",
    ],
)
def test_label_problems_get_the_right_message(tmp_path, labels, message):
    path = _write(tmp_path / "batch", {"data": _images(4), "labels": labels})
    with pytest.raises(UserError, match=message):
        read_cifar_batch(path)


def test_a_half_written_fake_set_is_replaced_but_a_folder_with_other_files_is_not(tmp_path):
    folder = tmp_path / "lab2-fake-3-1-0" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "data_batch_1").write_bytes(b"half")  # an interrupted run's leftover: lab2's own name
    assert make_fake_cifar10(tmp_path, 3, 1) == folder
    (folder / "batches.meta").unlink()
    (folder / "my_notes.txt").write_text("mine")
    with pytest.raises(UserError, match="my_notes.txt"):
        make_fake_cifar10(tmp_path, 3, 1)
    assert (folder / "my_notes.txt").read_text() == "mine"


def test_labels_nested_too_deep_to_print_are_one_line(tmp_path):
    """Found by a hostile try: protocol-4 set opcodes build a frozenset nested 100,000 deep inside `labels` without
    any global, and the message's repr() of it raised RecursionError (a traceback, exit 1)."""
    from lab2.data.cifar_files import _labels

    deep = frozenset()
    for _ in range(100_000):
        deep = frozenset([deep])
    with pytest.raises(UserError, match="found frozenset \\(nested too deep to show\\)"):
        _labels(tmp_path / "data_batch_1", [3, deep], 10)
