"""The kinds of session store, one module each; an agent's profile holds the spec of its kind.

- per_cwd: a folder of JSONL files per cwd (pi, Oh My Pi, Claude Code, Qwen Code);
- date_tree: a YYYY/MM/DD tree of JSONL files, the cwd inside each (Codex);
- per_project: a folder of JSONL files per project, named by a registry (Gemini CLI);
- database: a SQLite database (opencode, Kilo);
- per_session: a folder per session with a JSON manifest (Cline).

Adding a kind is one more module: a frozen dataclass of base.StoreKind with its own fields.
"""

from .base import IdLayout, Query, Root, Search, SessionFolder, StoreIO, StoreKind
from .database import Database
from .date_tree import DateTree
from .per_cwd import PerCwd
from .per_project import PerProject
from .per_session import PerSession

__all__ = [
    "Database",
    "DateTree",
    "IdLayout",
    "PerCwd",
    "PerProject",
    "PerSession",
    "Query",
    "Root",
    "Search",
    "SessionFolder",
    "StoreIO",
    "StoreKind",
]
