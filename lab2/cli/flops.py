"""`lab2-flops`: the per-layer FLOPs and parameters of a registry model (2 FLOPs per multiply-add)."""

from __future__ import annotations

import json

from lab2.errors import UserError, exit_with_user_error
from lab2.explain.flops import count_flops
from lab2.flags import Parser, number_flag
from lab2.models import create_model


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="lab2-flops", description="Per-layer FLOPs and parameters of a lab2 model.")
    parser.add_argument("--model", default="simple_cnn", help="a name from the model registry")
    parser.add_argument("--num_classes", type=number_flag("--num_classes", minimum=1, maximum=100_000), default=10)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        report = count_flops(create_model(args.model, args.num_classes))
    except UserError as error:
        exit_with_user_error(error, "lab2-flops")
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())


if __name__ == "__main__":
    main()
