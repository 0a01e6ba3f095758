"""Evaluation layer: the protocols of PROTOCOLS.md, implemented once.

- `metrics`: pure metric functions (Top-k, NDCG with the gallery's IDCG, AP / MAP, triplet accuracy,
  Recall@k, classification top-k);
- `queries`: seeded query-file generation per protocol, JSONL read / write with sha256;
- `rankings`: rankings files (what a run returned per query);
- `protocols.evaluate`: query file + rankings file + catalogue -> report dict;
- `report`: report.json / report.md / PNG plots, and multi-run comparison tables;

`report` imports matplotlib only when a plot is drawn. Every report names its machine with
`vestis.machine.machine_info` (a ground-floor module: the benchmarks use it too).
"""

from vestis.eval.errors import EvalError, QueryFileError, QueryInRankingError, RankingsError, RankingTooShortError
from vestis.eval.protocols import PROTOCOL_VERSIONS, classification_report, evaluate
from vestis.eval.queries import (
    attribute_queries,
    file_sha256,
    manipulation_queries,
    read_queries,
    same_item_queries,
    triplet_queries,
    write_queries,
)
from vestis.eval.rankings import read_rankings, rows_from_indices, write_rankings
from vestis.eval.report import compare_reports, comparison_markdown, report_markdown, write_report

__all__ = [
    "EvalError", "QueryFileError", "QueryInRankingError", "RankingsError", "RankingTooShortError",
    "PROTOCOL_VERSIONS", "classification_report", "evaluate",
    "attribute_queries", "file_sha256", "manipulation_queries", "read_queries", "same_item_queries",
    "triplet_queries", "write_queries", "read_rankings", "rows_from_indices", "write_rankings",
    "compare_reports", "comparison_markdown", "report_markdown", "write_report",
]
