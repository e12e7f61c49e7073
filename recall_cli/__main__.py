import sys


def main() -> None:
    """`recall` / `python -m recall_cli`: a query that a running watcher can answer is answered
    before the CLI framework is imported (a warm query is a socket round trip); all else goes
    through the Typer app."""
    from recall_cli.cli.fast import fast_query

    code = fast_query(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from recall_cli.cli.commands import app

    app(prog_name="recall")


if __name__ == "__main__":
    main()
