"""Errors of the evaluation layer. All are `VestisError`s: the CLI prints them as one line."""

from vestis.errors import VestisError


class EvalError(VestisError):
    """An evaluation cannot be computed: the inputs contradict each other or a protocol rule."""


class QueryFileError(EvalError):
    """A query file (JSONL) is malformed or contradicts the catalogue; the message names the line."""


class RankingsError(EvalError):
    """A rankings file (JSONL) is malformed, or does not match the query file / gallery."""


class QueryInRankingError(RankingsError):
    """A ranking lists the query's own item: the query never sits in the gallery it searches."""

    def __init__(self, query_id: str, item_id: str):
        self.query_id, self.item_id = query_id, item_id
        super().__init__(
            f"query {query_id!r}: its ranking contains the query's own item {item_id!r}; the query never sits "
            f"in the gallery it searches (PROTOCOLS.md) - exclude query items from the gallery / index"
        )


class RankingTooShortError(RankingsError):
    """A ranking is too short to decide a metric (fewer ids than the metric's depth needs)."""
