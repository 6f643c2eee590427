"""Entry point: `python run.py [COMMAND] [--config FILE]` (see `python run.py --help`)."""

import sys

from aggregator.cli import main

if __name__ == "__main__":
    sys.exit(main())
