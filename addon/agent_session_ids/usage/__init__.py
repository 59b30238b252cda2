"""Usage, cache hits and cost per agent session, read from the gateways' answers as they pass:
parse (the formats), observer (the stream callable), ledger (the JSONL file), totals and report
(reading it back), recorder (what the addon's hooks hand over to)."""
