"""The rewrite: a request's body read, values rendered from its session and set into its headers
and JSON body as the rules say (apply), each edit changing only its own bytes (fields)."""

from .fields import RewriteError, blank, merge_member, render, scan_object, set_field, set_header

__all__ = ["RewriteError", "blank", "merge_member", "render", "scan_object", "set_field", "set_header"]
