"""`python -m agent_session_ids.check [RULES_DIR]`: check a rules folder (cli/check.py)."""

import sys

from .cli.check import main

if __name__ == "__main__":
    sys.exit(main())
