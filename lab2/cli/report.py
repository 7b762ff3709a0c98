"""`lab2-report RUN_DIR`: write the run's self-contained report.html (see lab2.report.pages).

`lab2-report RUN_A RUN_B [...] --output compare.html`: one page with the runs side by side.
"""

from __future__ import annotations

from lab2.errors import UserError, exit_with_user_error
from lab2.flags import Parser
from lab2.report.pages import write_comparison, write_report


def main(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="lab2-report",
        description="Write RUN_DIR/report.html, a self-contained page for one run; with several runs, one page "
        "that compares them (--output required).",
    )
    parser.add_argument("run_dir", nargs="+", help="a run's --output_dir; two or more to compare runs")
    parser.add_argument(
        "--output",
        default=None,
        help="the page to write (default for one run: RUN_DIR/report.html; several runs: required, e.g. compare.html)",
    )
    args = parser.parse_args(argv)
    try:
        if len(args.run_dir) == 1:
            print(write_report(args.run_dir[0], args.output))
        else:
            print(write_comparison(args.run_dir, args.output))
    except UserError as error:
        exit_with_user_error(error, "lab2-report")


if __name__ == "__main__":
    main()
