"""Check a rules folder without starting a proxy, like `nginx -t`:

    python -m agent_session_ids.check [RULES_DIR]

Prints `ok: ...` and exits 0, or prints `file:line: what is wrong; how to fix it` and exits 1.
"""

from __future__ import annotations

import sys

from ..rules import RuleError, default_rules_dir, load_rules_dir
from ..rules.matching import RuleSet
from ..shown import shown_lines


def check_folder(path: str) -> tuple[bool, str]:
    try:
        rules = load_rules_dir(path)
    except RuleError as e:
        return False, str(e)
    hosts = ", ".join(RuleSet(rules).hosts) or "no hosts"
    off = [r.name for r in rules if not r.enabled]
    off_note = f" ({len(off)} off until session_enable names them: {', '.join(off)})" if off else ""
    return True, f"ok: {len(rules)} rules in {path}{off_note} for {hosts}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or (args and args[0] in ("-h", "--help")):
        print(__doc__.strip())
        return 2
    ok, message = check_folder(args[0] if args else default_rules_dir())
    print(shown_lines(message.split("\n")), file=sys.stdout if ok else sys.stderr)  # a rule file may quote anything
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
