"""Session resolution: from the request and the process that sent it, to its agent's store, to
the session.

- pure decisions over plain data: `finder` (the order of evidence), `resolver` (the bindings,
  under the keys of `keys`), `memo` (what a decision rested on), `scopes` (whose stores and
  bindings), `conversation`, `ids`, `agents` (the profiles, as data), `formats` (how records
  read), `model` (the types they share);
- the thin I/O adapters that build the snapshots they take: `proc` (/proc and netlink),
  `visibility` (why a process cannot be read), `stores` and `kinds` (the agents' session stores,
  one module per kind of store), `jsonl_store`, `session_dirs` and `id_index` (reading them),
  `files` (opening files that may be FIFOs), `mounts` (local or network filesystems), `state`
  (the bindings on disk);
- `runner`: where each resolution runs (the event loop or a worker), and the work between requests.
"""
