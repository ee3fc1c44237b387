"""The search engine's domain error (the CLI turns it into a one-line message, the web server into a 4xx)."""


class SearchError(Exception):
    """A query that cannot be answered; the message says why and what to do."""
