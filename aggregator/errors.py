"""One exception tree for the whole package.

AggregatorError
 ├── ConfigError    a bad YAML file, key or value (names file, line and key path)
 ├── FetchError     the HTTP/file retrieval failed (names source and URL)
 ├── ParseError     the body is not a usable feed (names source and cause)
 ├── StoreError     the database refused or is not ready
 └── PublishError   a topic feed could not be rendered

Third-party exceptions are wrapped once, at the boundary that meets them, with ``raise ... from e``.
``str(error)`` is meant to be read by an operator, without a traceback.
"""

from __future__ import annotations


class AggregatorError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(AggregatorError):
    """The configuration is invalid; ``problems`` lists each one as a readable line."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems: list[str] = list(problems) if problems else [message]

    def __str__(self) -> str:
        head = self.args[0] if self.args else "invalid configuration"
        if len(self.problems) <= 1 and self.problems and self.problems[0] == head:
            return str(head)
        return "\n".join([str(head), *("  " + p for p in self.problems)])


class FetchError(AggregatorError):
    """Retrieving a source failed. ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.url = url


class ParseError(AggregatorError):
    """The retrieved body is not a feed anything usable could be taken from."""


class StoreError(AggregatorError):
    """The database failed or its schema is not ready."""


class PublishError(AggregatorError):
    """A topic feed could not be rendered."""
