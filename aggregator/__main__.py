"""`python -m aggregator` and the `aggregator` console script: the CLI, imported when it runs.

Not at import: multiprocessing imports the main script again in every parse pool process, and a pool
process needs parse and normalize only (the CLI would cost it ~60 MB of SQLAlchemy, pydantic, requests).
"""

import sys


def main() -> int:
    from aggregator.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
