"""`python -m agent_session_ids.report`: the usage report (cli/report.py)."""

import sys

from .cli.report import main

if __name__ == "__main__":
    sys.exit(main())
