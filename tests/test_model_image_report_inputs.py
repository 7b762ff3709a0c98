"""lab2-eval / lab2-predict on damaged model files, lab2-predict on hostile images, lab2-report on damaged
run folders (issue 11, section 5): one `error:` line per problem, exit 2, no traceback, the other images
still predicted."""

import json
import struct
import zlib

import pytest
from safetensors.torch import save_file

from lab2.cli import eval as eval_cli
from lab2.cli import predict as predict_cli
from lab2.cli.tools import report_main
from lab2.config import TrainConfig
from lab2.data.cifar_files import CIFAR10_CLASSES
from lab2.models import create_model


def _png(path, width, height, bit_depth=8, colour=2, pixel=b"\x80"):
    """A real PNG file written by hand (so its header can claim any size at almost no cost)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    channels = {0: 1, 2: 3}[colour] * (bit_depth // 8)
    compressor = zlib.compressobj(9)
    row = b"\x00" + pixel * (width * channels // len(pixel))
    raw = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def model_parts():
    state = {k: v.contiguous() for k, v in create_model("simple_cnn", 10).state_dict().items()}
    metadata = {
        "model": "simple_cnn",
        "num_classes": "10",
        "class_names": json.dumps(list(CIFAR10_CLASSES)),
        "config": json.dumps(TrainConfig(dataset="fake").to_dict()),
        "format": "pt",
    }
    return state, metadata


def _model_file(tmp_path, model_parts, drop=(), **metadata):
    state, base = model_parts
    path = tmp_path / "model.safetensors"
    save_file({k: v for k, v in state.items() if k not in drop}, str(path), metadata={**base, **metadata})
    return path


def _errors(capsys, main, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return exit_info.value.code, [line for line in captured.err.splitlines() if "error:" in line], captured.out


BAD_METADATA = {
    "num-classes-text": ({"num_classes": "abc"}, (), ["num_classes"]),
    "num-classes-wrong": ({"num_classes": "7"}, (), ["lists 10 classes but 'num_classes' is 7", "fc2.weight"]),
    "num-classes-negative": ({"num_classes": "-1"}, (), ["num_classes"]),
    "class-names-not-json": ({"class_names": "[airplane"}, (), ["class_names", "not valid JSON"]),
    "class-names-a-dict": ({"class_names": '{"a": 1}'}, (), ["class_names", "JSON list"]),
    "config-not-json": ({"config": "{oops"}, (), ["config", "not valid JSON"]),
    "config-a-list": ({"config": "[1]"}, (), ["config", "JSON dict"]),
    "config-bad-value": ({"config": json.dumps({"seed": -4})}, (), ["--seed"]),
    "missing-tensor": ({}, ("fc2.weight",), ["fc2.weight", "missing"]),
    "two-problems": ({"num_classes": "abc", "class_names": "[x"}, (), ["num_classes", "class_names"]),
}


@pytest.mark.parametrize("case", BAD_METADATA, ids=list(BAD_METADATA))
def test_a_model_file_with_bad_metadata_gets_one_line_per_problem(tmp_path, capsys, model_parts, case):
    metadata, drop, fragments = BAD_METADATA[case]
    path = _model_file(tmp_path, model_parts, drop, **metadata)
    image = _png(tmp_path / "a.png", 32, 32)
    for main, argv in (
        (predict_cli.main, ["--model_path", str(path), str(image)]),
        (eval_cli.main, ["--model_path", str(path), "--output_dir", str(tmp_path / "eval")]),
    ):
        code, lines, _ = _errors(capsys, main, argv)
        assert code == 2 and lines, lines
        assert all(str(path) in line for line in lines), lines
        for fragment in fragments:
            assert sum(fragment in line for line in lines) == 1, (fragment, lines)  # each problem once, on its own line


def test_a_decompression_bomb_does_not_stop_the_other_images(tmp_path, capsys, model_parts):
    model = _model_file(tmp_path, model_parts)
    bomb = _png(tmp_path / "bomb.png", 20000, 20000, colour=0, pixel=b"\x00")  # 400 Mpixels in ~400 kB
    folder = tmp_path / "a-folder.png"
    folder.mkdir()
    good = _png(tmp_path / "good.png", 48, 40)
    code, lines, out = _errors(
        capsys, predict_cli.main, ["--model_path", str(model), str(bomb), str(folder), str(good)]
    )
    assert code == 1
    assert len(lines) == 2 and "bomb.png" in lines[0] and "a-folder.png" in lines[1], lines
    assert "good.png:" in out


def test_a_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    quarter = _png(tmp_path / "gray16.png", 32, 32, bit_depth=16, colour=0, pixel=b"\x40\x00")  # 16384/65535: 25% grey
    eight = _png(
        tmp_path / "gray8.png", 32, 32, bit_depth=8, colour=0, pixel=b"\x40"
    )  # 64/255: the same grey in 8 bits
    tensor16, note = predict_cli.read_image(str(quarter))
    tensor8, _ = predict_cli.read_image(str(eight))
    assert note and "16-bit" in note
    assert (tensor16 - tensor8).abs().max() < 0.02, (float(tensor16[0, 0, 0]), float(tensor8[0, 0, 0]))


@pytest.mark.parametrize("peak", [1.0, 255.0, 4000.0])
def test_a_32_bit_float_tiff_is_read_by_its_range_not_as_16_bit(tmp_path, peak):
    """Issue 16, section 3: a float TIFF of 0..255 was divided by 65535 (a black image, called 16-bit)."""
    import numpy as np
    from PIL import Image

    values = np.full((32, 32), 0.25 * peak, dtype=np.float32)
    values[0, 0] = peak  # the range's top, so a 0..4000 image is scaled by its range
    values[0, 1] = 0.0
    Image.fromarray(values, mode="F").save(tmp_path / "float.tiff")
    _png(tmp_path / "gray8.png", 32, 32, bit_depth=8, colour=0, pixel=b"\x40")  # 64/255: the same 25% grey
    tensor, note = predict_cli.read_image(str(tmp_path / "float.tiff"))
    reference, _ = predict_cli.read_image(str(tmp_path / "gray8.png"))
    assert note and "32-bit float" in note and "16-bit" not in note
    assert (tensor[:, 8:, 8:] - reference[:, 8:, 8:]).abs().max() < 0.02  # away from the two marker pixels


def _run_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lab2-run.json").write_text('{"lab2": "run"}')
    (run / "config.json").write_text(json.dumps(TrainConfig(run_name="r").to_dict()))
    (run / "summary.json").write_text(json.dumps({"final_eval_acc": 0.5, "best_eval_acc": 0.6, "params": 10}))
    (run / "metrics.jsonl").write_text(
        json.dumps(
            {
                "epoch": 1,
                "train_loss": 1.0,
                "train_acc": 0.4,
                "eval_loss": 1.1,
                "eval_acc": 0.5,
                "epoch_time_s": 2.0,
                "train_images_per_s": 100.0,
            }
        )
        + "\n"
    )
    return run


DAMAGED_RUNS = {
    "truncated-config": (lambda r: (r / "config.json").write_text('{"model": "simple_c'), "config.json"),
    "config-a-list": (lambda r: (r / "config.json").write_text("[]"), "config.json"),
    "summary-a-list": (lambda r: (r / "summary.json").write_text("[1, 2]"), "summary.json"),
    "summary-not-utf8": (lambda r: (r / "summary.json").write_bytes(b"\xff\xfe{"), "summary.json"),
}


@pytest.mark.parametrize("case", DAMAGED_RUNS, ids=list(DAMAGED_RUNS))
def test_report_on_a_damaged_run_folder_is_one_error(tmp_path, capsys, case):
    damage, name = DAMAGED_RUNS[case]
    run = _run_folder(tmp_path)
    damage(run)
    code, lines, _ = _errors(capsys, report_main, [str(run)])
    assert code == 2 and len(lines) == 1 and name in lines[0], lines


@pytest.mark.parametrize(
    "edit",
    [
        lambda r: (r / "config.json").write_text('{"run_name": "no model key"}'),
        lambda r: (r / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2, "train_loss": "x"}\n{"epoch": 3, "tra'),
        lambda r: (r / "summary.json").write_text('{"final_eval_acc": "high", "class_accuracy": [1], "params": null}'),
        lambda r: (r / "flops.json").write_text('{"layers": 3}'),
    ],
    ids=["no-model-key", "odd-metrics", "odd-summary-values", "odd-flops"],
)
def test_report_renders_what_it_can_of_odd_but_readable_files(tmp_path, capsys, edit):
    run = _run_folder(tmp_path)
    edit(run)
    report_main([str(run)])
    assert "<html" in (run / "report.html").read_text()


def test_report_never_replaces_a_report_it_did_not_write(tmp_path, capsys):
    run = _run_folder(tmp_path)
    (run / ".lab2-run.json").unlink()
    (run / "report.html").write_text("<p>mine</p>")
    code, lines, _ = _errors(capsys, report_main, [str(run)])
    assert code == 2 and "--output" in lines[0]
    assert (run / "report.html").read_text() == "<p>mine</p>"
    report_main([str(run), "--output", str(tmp_path / "page.html")])
    assert "<html" in (tmp_path / "page.html").read_text()


def test_eval_never_writes_into_a_folder_it_did_not_start(tmp_path, capsys, model_parts):
    model = _model_file(tmp_path, model_parts)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "confusion_matrix.png").write_bytes(b"my own figure")
    code, lines, _ = _errors(capsys, eval_cli.main, ["--model_path", str(model), "--output_dir", str(out)])
    assert code == 2 and len(lines) == 1 and "not a lab2-eval folder" in lines[0]
    assert (out / "confusion_matrix.png").read_bytes() == b"my own figure"


def test_predict_on_a_folder_predicts_every_image_in_it_and_skips_other_files(tmp_path, capsys, model_parts):
    model = _model_file(tmp_path, model_parts)
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("b.png", "a.PNG", "c.png"):
        _png(photos / name, 40, 30)
    (photos / "notes.txt").write_text("not an image")
    (photos / ".hidden.png").write_bytes(b"junk")
    (photos / "sub.png").mkdir()  # a folder named like an image: not read
    code, lines, out = _errors(capsys, predict_cli.main, ["--model_path", str(model), str(photos), "--json"])
    assert code == 0 and lines == []
    assert [r["image"] for r in json.loads(out)] == [str(photos / n) for n in ("a.PNG", "b.png", "c.png")]
    empty = tmp_path / "empty"
    empty.mkdir()
    code, lines, _ = _errors(capsys, predict_cli.main, ["--model_path", str(model), str(empty)])
    assert code == 1 and len(lines) == 1 and "a folder with no image files" in lines[0], lines
