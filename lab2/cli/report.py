"""`lab2-report RUN_DIR`: write the run's self-contained report.html (see lab2.engine.report)."""

from __future__ import annotations

from lab2.config.flag_types import Parser
from lab2.engine.report import write_report
from lab2.errors import UserError, exit_with_user_error


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="lab2-report", description="Write RUN_DIR/report.html, a self-contained page for one run.")
    parser.add_argument("run_dir", help="a run's --output_dir")
    parser.add_argument("--output", default=None, help="the page to write (default: RUN_DIR/report.html)")
    args = parser.parse_args(argv)
    try:
        print(write_report(args.run_dir, args.output))
    except UserError as error:
        exit_with_user_error(error, "lab2-report")


if __name__ == "__main__":
    main()
