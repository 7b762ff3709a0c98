"""The one-screen commands: lab2-report (a run's page, or runs side by side), lab2-export (a model file from the
lab's model_final.pth or a run folder) and lab2-flops (a model's per-layer FLOPs)."""

from __future__ import annotations

import json
from pathlib import Path

from lab2.errors import UserError, exit_with_user_error
from lab2.flags import Parser, number_flag


def report_main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="lab2-report", description="Write RUN_DIR/report.html, or one page comparing several runs.")
    parser.add_argument("run_dir", nargs="+", help="a run's --output_dir; two or more to compare runs")
    parser.add_argument("--output", help="the page (default: RUN_DIR/report.html; required for several runs)")
    args = parser.parse_args(argv)
    from lab2.report.pages import write_comparison, write_report

    try:
        one = len(args.run_dir) == 1
        print(write_report(args.run_dir[0], args.output) if one else write_comparison(args.run_dir, args.output))
    except UserError as error:
        exit_with_user_error(error, "lab2-report")


def export_main(argv: list[str] | None = None) -> None:
    from lab2.data.cifar_files import CIFAR10_CLASSES

    parser = Parser(
        prog="lab2-export",
        description="Write a lab2 model.safetensors (with the metadata lab2-eval and lab2-predict read) from the "
        "course lab's model_final.pth, or from a run folder: a stopped run gives its newest checkpoint's weights.",
    )
    parser.add_argument(
        "source", help="the lab's model_final.pth (torch.save of a state dict), a run folder or one of its checkpoints"
    )
    parser.add_argument("--output", help="default: model.safetensors beside a .pth, RUN.safetensors beside RUN")
    parser.add_argument("--model", default="simple_cnn", help="the lab2 model a .pth file's weights belong to")
    parser.add_argument("--class_names", default=",".join(CIFAR10_CLASSES), help="a .pth file's, comma-separated")
    args = parser.parse_args(argv)
    from lab2.state.model_file import is_lab_checkpoint, load_lab_model, load_run_model, save_model_file
    from lab2.state.run_folder import EXPORT_MARK, check_export_target

    source = Path(args.source)
    lab_file = is_lab_checkpoint(source)
    default = source.parent / f"{source.name}.safetensors" if source.is_dir() else source.with_name("model.safetensors")
    output = Path(args.output) if args.output else default
    try:
        if output.resolve() == source.resolve():
            raise UserError(f"--output {output} is the source file; choose another name.")
        names = tuple(name.strip() for name in args.class_names.split(",") if name.strip())
        loaded = load_lab_model(source, args.model, names) if lab_file else load_run_model(source)
        check_export_target(output)  # a new file, or one lab2-export wrote: never a user's or a run's own model
        metadata = {
            "model": loaded.config.model,
            "num_classes": len(loaded.class_names),
            "class_names": json.dumps(list(loaded.class_names)),
            "config": json.dumps(loaded.config.to_dict()),
            "source": f"lab state dict {source.name}" if lab_file else str(loaded.path),
            EXPORT_MARK[0]: EXPORT_MARK[1],  # lets a later export replace this file, and only this kind of file
            "format": "pt",
        }
        path = save_model_file(loaded.model.state_dict(), output, metadata)
    except UserError as error:
        exit_with_user_error(error, "lab2-export")
    print(
        f"wrote {path} ({loaded.config.model}, {len(loaded.class_names)} classes); "
        f"evaluate it with: lab2-eval --model_path {path}" + (" --data_dir DIR" if lab_file else "")
    )


def flops_main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="lab2-flops", description="Per-layer FLOPs and parameters of a lab2 model.")
    parser.add_argument("--model", default="simple_cnn", help="a name from the model registry")
    parser.add_argument("--num_classes", type=number_flag("--num_classes", minimum=1, maximum=100_000), default=10)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    from lab2.explain.flops import count_flops
    from lab2.models import create_model

    try:
        report = count_flops(create_model(args.model, args.num_classes))
    except UserError as error:
        exit_with_user_error(error, "lab2-flops")
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())
