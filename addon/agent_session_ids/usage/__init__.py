"""Usage, cache hits and cost per agent session, read from the gateways' answers as they pass:
parse (the formats), observer (the stream callable), ledger (the JSONL file), totals, timespec,
grouping and render_text/_json/_html (reading it back: the report, whose command is cli/report.py),
recorder (what the addon's hooks hand over to)."""
