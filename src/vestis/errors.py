"""Errors vestis raises on bad input. Each message says what was wrong and what is valid."""

ECHO_LIMIT = 80  # characters of a user's input quoted back in a message


def echo(value, limit: int = ECHO_LIMIT) -> str:
    """`value` quoted for a message: its repr (so control characters and lone surrogates come out escaped and
    the message can always be printed or sent as UTF-8), cut to `limit` characters with the full length said."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value)} characters" if isinstance(value, str) else f"{len(text)} characters as text"
    return f"{text[:limit]}... ({size})"


class VestisError(Exception):
    """Base class: a problem with the user's input or data, reported without a traceback by the CLI."""


class CatalogError(VestisError):
    """A catalogue cannot be read: unknown format, missing required column, empty catalogue."""


class UnknownAttributeError(VestisError, KeyError):
    def __init__(self, attribute: str, valid: list[str]):
        self.attribute, self.valid = attribute, list(valid)
        super().__init__(f"unknown attribute {echo(attribute)}; valid attributes: {', '.join(self.valid)}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class UnknownValueError(VestisError, KeyError):
    def __init__(self, attribute: str, value: str, valid: list[str]):
        self.attribute, self.value, self.valid = attribute, value, list(valid)
        super().__init__(
            f"unknown value {echo(value)} for attribute {echo(attribute)}; valid values: {', '.join(self.valid)}"
        )

    def __str__(self) -> str:
        return self.args[0]
