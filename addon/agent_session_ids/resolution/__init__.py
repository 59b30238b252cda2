"""Session resolution: from the process that sent a request, to its agent's store, to the session.

Pure decisions live in `resolver`, `conversation` and `ids`; `proc`, `stores` and `state` are the
thin I/O adapters that build the plain snapshots they take.
"""
