"""Entry point: `python run.py [COMMAND] [--config FILE]` (see `python run.py --help`).

The CLI is imported under the ``__main__`` guard: every parse pool process imports this file again (as
multiprocessing does with the main script), and should load parse and normalize only, not the CLI.
"""

import sys

if __name__ == "__main__":
    from aggregator.cli import main

    sys.exit(main())
