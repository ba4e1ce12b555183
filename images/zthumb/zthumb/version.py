"""The server version (kept out of ``__init__`` so it imports the same in every install mode)."""

__version__ = "0.1.0"
