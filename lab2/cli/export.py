"""`lab2-export`: the course lab's model_final.pth -> a lab2 model.safetensors (see lab2.state.model_file).

lab2-export model_final.pth [--output model.safetensors] [--model simple_cnn] [--class_names a,b,...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lab2.data.cifar_files import CIFAR10_CLASSES
from lab2.errors import UserError, exit_with_user_error
from lab2.flags import Parser
from lab2.state.model_file import export_lab_model


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="lab2-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="the lab's model_final.pth (torch.save of a state dict)")
    parser.add_argument(
        "--output", default=None, help="the model.safetensors to write (default: model.safetensors beside the source)"
    )
    parser.add_argument("--model", default="simple_cnn", help="the lab2 model the weights belong to")
    parser.add_argument(
        "--class_names", default=",".join(CIFAR10_CLASSES), help="comma-separated class names, in label order"
    )
    args = parser.parse_args(argv)
    output = Path(args.output) if args.output else Path(args.source).with_name("model.safetensors")
    class_names = tuple(name.strip() for name in args.class_names.split(",") if name.strip())
    try:
        if output.resolve() == Path(args.source).resolve():
            raise UserError(f"--output {output} is the source file; choose another name.")
        path = export_lab_model(args.source, output, args.model, class_names)
    except UserError as error:
        exit_with_user_error(error, "lab2-export")
    print(
        f"wrote {path} ({args.model}, {len(class_names)} classes); "
        f"evaluate it with: lab2-eval --model_path {path} --data_dir DIR"
    )


if __name__ == "__main__":
    main()
