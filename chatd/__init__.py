"""chatd: a multi-tenant chat backend with asynchronous, search-indexed message storage."""

__version__ = "0.1.0"
