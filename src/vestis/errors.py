"""Errors vestis raises on bad input. Each message says what was wrong and what is valid."""


class VestisError(Exception):
    """Base class: a problem with the user's input or data, reported without a traceback by the CLI."""


class CatalogError(VestisError):
    """A catalogue cannot be read: unknown format, missing required column, empty catalogue."""


class UnknownAttributeError(VestisError, KeyError):
    def __init__(self, attribute: str, valid: list[str]):
        self.attribute, self.valid = attribute, list(valid)
        super().__init__(f"unknown attribute {attribute!r}; valid attributes: {', '.join(self.valid)}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class UnknownValueError(VestisError, KeyError):
    def __init__(self, attribute: str, value: str, valid: list[str]):
        self.attribute, self.value, self.valid = attribute, value, list(valid)
        super().__init__(
            f"unknown value {value!r} for attribute {attribute!r}; valid values: {', '.join(self.valid)}"
        )

    def __str__(self) -> str:
        return self.args[0]
