"""`python -m agent_session_ids.report`: the usage report (see usage/report.py)."""

import sys

from ..usage.report import run as main  # the console script's entry

if __name__ == "__main__":
    sys.exit(main())
