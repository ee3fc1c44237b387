"""The web server's one error type: whatever a route refuses, answered as JSON."""


class HTTPProblem(Exception):
    """An error answered as JSON {"detail": message} with `status`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message
