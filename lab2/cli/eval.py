"""`lab2-eval`: evaluate a saved model on the test split with Accelerate, on any device and any number of processes.

    lab2-eval --model_path runs/<run> [--data_dir DIR | --dataset_name ID] [--output_dir FOLDER]
    lab2-eval --model_path model_final.pth --data_dir DIR      (the course lab's saved state dict)

The data, --max_eval_samples and memory format default to the run's own, so it prints the run's final accuracy
exactly. A run stopped before its model.safetensors is evaluated with its newest checkpoint's weights.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from lab2.config import DATASETS, TrainConfig
from lab2.data.cifar import load_splits
from lab2.data.device_dataset import DeviceDataset, device_dataloader, use_channels_last
from lab2.engine.evaluation import evaluate
from lab2.errors import UserError, exit_with_user_error
from lab2.explain import plots
from lab2.flags import Parser, number_flag
from lab2.state.files import write_json
from lab2.state.model_file import MODEL_PATH_HELP, load_run_model
from lab2.state.run_folder import check_eval_output_dir, claim

NUMBER_FLAGS = {  # name: (default, help), each with the training flag's checked type and range
    "max_eval_samples": (None, "default: the run's"),
    "per_device_eval_batch_size": (512, None),
    "num_prediction_samples": (24, "images in predictions.png"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="lab2-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", required=True, help=MODEL_PATH_HELP)
    parser.add_argument("--data_dir", default=None, help="folder holding cifar-10-batches-py/ (default: the run's)")
    parser.add_argument("--dataset_name", default=None, help="a Hub id or save_to_disk folder (default: the run's)")
    parser.add_argument("--dataset", default=None, choices=DATASETS, help="default: the run's")
    for name, (default, text) in NUMBER_FLAGS.items():
        bounds = TrainConfig.__dataclass_fields__[name].metadata["bounds"]
        parser.add_argument(f"--{name}", type=number_flag(f"--{name}", **bounds), default=default, help=text)
    parser.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average each image's logits with its mirror image's (default: as the run was evaluated)",
    )
    parser.add_argument("--output_dir", help="where figures and eval.json go (default: <run folder>/eval)")
    return parser


def run_eval(args) -> dict:
    from accelerate import Accelerator

    loaded = load_run_model(args.model_path)
    source = Path(args.model_path)
    out = Path(args.output_dir) if args.output_dir else (source if source.is_dir() else source.parent) / "eval"
    check_eval_output_dir(out)  # before any work: never write over files lab2-eval did not write
    overrides = {
        k: v for k in ("data_dir", "dataset_name", "dataset", "max_eval_samples") if (v := getattr(args, k)) is not None
    }
    if "data_dir" in overrides and "dataset_name" not in overrides:
        overrides["dataset_name"] = ""  # an explicit --data_dir means the on-disk files
    cfg = dataclasses.replace(loaded.config, **overrides)
    accelerator = Accelerator()
    try:
        with accelerator.main_process_first():
            splits = load_splits(dataclasses.replace(cfg, max_train_samples=1))
        if splits.num_classes != len(loaded.class_names):
            raise UserError(
                f"the model has {len(loaded.class_names)} classes but the data set has {splits.num_classes}; "
                "evaluate it on the data it was trained for."
            )
        channels_last = use_channels_last(cfg.channels_last, accelerator.device)  # as in training: same numerics
        model = loaded.model.to(memory_format=torch.channels_last) if channels_last else loaded.model
        test_set = DeviceDataset(
            splits.test_images, splits.test_labels, train=False, device=accelerator.device, channels_last=channels_last
        )
        model, loader = accelerator.prepare(
            model, device_dataloader(test_set, args.per_device_eval_batch_size, shuffle=False)
        )
        tta = cfg.tta if args.tta is None else args.tta
        model, samples = accelerator.unwrap_model(model), args.num_prediction_samples
        result = evaluate(model, loader, accelerator, splits.num_classes, samples, tta=tta)
        report = {
            "model_path": str(loaded.path),
            "data": "synthetic images (--dataset fake)" if cfg.dataset == "fake" else cfg.dataset_name or cfg.data_dir,
            "accuracy": result.accuracy,
            "loss": result.loss,
            "num_samples": result.num_samples,
            "tta": tta,
            "ece": result.ece,  # of the flip-averaged logits with tta, as in training
            "class_accuracy": result.class_accuracy(splits.class_names),
        }
        if accelerator.is_main_process:
            claim(out, "eval")
            for name, fig in plots.evaluation_figures(
                result.confusion, result.per_class_accuracy, result.samples, splits.class_names
            ).items():
                plots.save_figure(fig, out / f"{name}.png")
            logits = "flip-averaged logits (--tta)" if tta else "plain logits"
            plots.save_figure(plots.reliability_figure(result.calibration, logits), out / "calibration.png")
            write_json(out / "eval.json", report)
            print(
                f"accuracy: {100 * result.accuracy:.2f}% ({round(result.accuracy * result.num_samples)}/"
                f"{result.num_samples}), loss {result.loss:.4f}, ECE {result.ece:.4f} (15 bins, {logits})"
                + (" | synthetic data, not CIFAR-10" if cfg.dataset == "fake" else "")
            )
            for name, value in report["class_accuracy"].items():
                print(f"  {name:>12}: " + (f"{100 * value:6.2f}%" if value is not None else "   n/a (no test images)"))
            print(f"figures and eval.json in {out}")
        return report
    finally:
        accelerator.end_training()


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        run_eval(args)
    except UserError as error:
        exit_with_user_error(error, "lab2-eval")


if __name__ == "__main__":
    main()
