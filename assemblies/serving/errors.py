"""The API's error: an HTTP status and OpenAI's error object."""

from __future__ import annotations

from typing import Any

__all__ = ["ApiError"]


class ApiError(Exception):
    """An error answered in OpenAI's shape.

    Args:
        status: HTTP status (4xx: the request's fault, 5xx: the server's).
        message: What is wrong, naming the field and the value expected.
        param: The request field at fault.
        code: A machine-readable code (``"model_not_found"``, ``"context_length_exceeded"``, ...).
    """

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    @property
    def type(self) -> str:
        return "invalid_request_error" if self.status < 500 else "server_error"

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
