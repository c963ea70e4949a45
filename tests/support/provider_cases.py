"""What both provider test modules check the same way: the permanent statuses and a hidden key."""

from __future__ import annotations

from coditect.errors import ProviderError

# Each permanent HTTP status and a phrase of the hint its error message must carry.
PERMANENT_STATUS_HINTS = [
    (400, "check the model name"),
    (401, "the API key was refused"),
    (403, "no permission"),
    (404, "check the base URL and model name"),
    (422, "not understood"),
]


def assert_key_hidden(err: ProviderError, key: str) -> None:
    for text in (str(err), repr(err), err.message):
        assert key not in text
