"""Rankings files (PROTOCOLS.md): what a run returned for each query, from which every metric is computed.

One JSON object per line, one line per query of the query file, in one of three shapes:

- `{"query_id": ..., "ranked": [gallery item ids, best first]}` - protocols 1 (manipulation), 2 (attribute
  MAP) and 3 (same item). At least 50 ids, or every candidate when there are fewer. Protocol 2 (MAP)
  needs the **full candidate list**: every gallery item with a known value of the query's attribute must
  be ranked (gallery items with that attribute unspecified may be listed too; they are dropped before
  scoring). The gallery-size curve of protocol 1 needs longer lists than 50 (about 2 * 20 / f ids for a
  gallery fraction f, e.g. 400 for 10 %).
- `{"query_id": ..., "scores": [sim_pos, sim_neg]}` - triplet queries (protocol 2): the similarities
  sim(x, x+ | a) and sim(x, x- | a) of the triplet named on the query line; finite numbers.
- `{"query_id": ..., "ranked": [the groups read round-robin], "groups": [{"label", "box", "ranked"}]}` -
  grouped answers (protocol 4, part-based suggestions): one group per part of the query image, `box`
  (x0, y0, x1, y1) in query-image pixels or null; `ranked` is the round-robin list, so a flat-list scorer and
  a group scorer both read the row.
- `{"query_id": ..., "skipped": "reason"}` - the run could not answer this query (e.g. the query image is
  missing or unreadable). Skipped queries are counted in the report by reason and left out of the
  metrics; a query that has no line at all is an error.

Ties in a method's scores are resolved by the order the writer puts the ids in; break them
deterministically (e.g. by gallery id) so a run's file is reproducible.
Integer ids are read as strings (some tools write numeric ids as numbers).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from vestis.eval.errors import RankingsError, RankingTooShortError
from vestis.eval.queries import file_sha256

MIN_RANKED = 50
"""Minimum ranked list length (unless the candidate set is smaller)."""


def required_length(n_candidates: int, min_ranked: int = MIN_RANKED) -> int:
    """Ids a ranked list must hold: min(50, number of candidates)."""
    return min(min_ranked, n_candidates)


def _norm_id(x, where: str) -> str:
    if isinstance(x, bool) or not isinstance(x, (str, int)):
        raise RankingsError(f"{where}: ranked ids must be strings, got {x!r}")
    return str(x)


def normalize_row(row, where: str = "row") -> dict:
    """Validate one rankings row and return it normalised (ids as strings, scores as floats)."""
    if not isinstance(row, Mapping):
        raise RankingsError(f"{where}: a rankings row must be a JSON object, got {type(row).__name__}")
    qid = row.get("query_id")
    if isinstance(qid, int) and not isinstance(qid, bool):
        qid = str(qid)
    if not isinstance(qid, str) or not qid:
        raise RankingsError(f"{where}: missing or non-string \"query_id\"")
    shapes = [k for k in ("ranked", "scores", "skipped") if k in row]
    if len(shapes) != 1:
        raise RankingsError(f"{where} (query {qid!r}): needs exactly one of \"ranked\", \"scores\", \"skipped\"")
    out: dict = {"query_id": qid}
    if "ranked" in row:
        ranked = row["ranked"]
        if isinstance(ranked, np.ndarray):
            ranked = ranked.tolist()
        if not isinstance(ranked, Sequence) or isinstance(ranked, str):
            raise RankingsError(f"{where} (query {qid!r}): \"ranked\" must be a list of ids")
        ids = [_norm_id(x, f"{where} (query {qid!r})") for x in ranked]
        if len(set(ids)) != len(ids):
            dup = next(x for i, x in enumerate(ids) if x in ids[:i])
            raise RankingsError(f"{where} (query {qid!r}): id {dup!r} is ranked twice")
        out["ranked"] = ids
    elif "scores" in row:
        s = row["scores"]
        if (not isinstance(s, Sequence) or isinstance(s, str) or len(s) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in s)):
            raise RankingsError(f"{where} (query {qid!r}): \"scores\" must be [sim_pos, sim_neg], two finite numbers")
        out["scores"] = [float(s[0]), float(s[1])]
    else:
        if not isinstance(row["skipped"], str) or not row["skipped"]:
            raise RankingsError(f"{where} (query {qid!r}): \"skipped\" must be a non-empty reason string")
        out["skipped"] = row["skipped"]
    if "groups" in row:
        out["groups"] = _normalize_groups(row["groups"], f"{where} (query {qid!r})")
    out.update({k: v for k, v in row.items() if k not in out and k not in ("ranked", "scores", "skipped")})
    return out


def _normalize_groups(groups, where: str) -> list[dict]:
    """PROTOCOLS.md section 4: [{"label", "box": [x0, y0, x1, y1] or null, "ranked": [ids]}], one per part."""
    if not isinstance(groups, Sequence) or isinstance(groups, str):
        raise RankingsError(f'{where}: "groups" must be a list of {{"label", "box", "ranked"}} objects')
    out = []
    for j, g in enumerate(groups):
        if not isinstance(g, Mapping) or not isinstance(g.get("label", ""), str) or "ranked" not in g:
            raise RankingsError(f'{where}: group #{j} must be an object with a string "label" and "ranked"')
        ranked = g["ranked"]
        if not isinstance(ranked, Sequence) or isinstance(ranked, str):
            raise RankingsError(f'{where}: group #{j}: "ranked" must be a list of ids')
        box = g.get("box")
        if box is not None and (not isinstance(box, Sequence) or len(box) != 4 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)):
            raise RankingsError(f'{where}: group #{j}: "box" must be [x0, y0, x1, y1] (four finite numbers) or null')
        out.append({**g, "label": g.get("label", ""), "box": None if box is None else [float(v) for v in box],
                    "ranked": [_norm_id(x, f"{where} group #{j}") for x in ranked]})
    return out


def index_rows(rows: Iterable[Mapping] | Mapping[str, Mapping]) -> dict[str, dict]:
    """Rows (a list, or a dict query_id -> row) validated into a dict query_id -> row."""
    if isinstance(rows, Mapping):
        rows = [{"query_id": k, **{kk: vv for kk, vv in v.items() if kk != "query_id"}} for k, v in rows.items()]
    out: dict[str, dict] = {}
    for i, row in enumerate(rows, 1):
        r = normalize_row(row, f"rankings row #{i}")
        if r["query_id"] in out:
            raise RankingsError(f"rankings row #{i}: duplicate query_id {r['query_id']!r}")
        out[r["query_id"]] = r
    return out


def write_rankings(path: str | Path, rows: Iterable[Mapping], *, n_candidates: int | None = None) -> str:
    """Write rankings as JSONL (one compact object per line, keys query_id then ranked/scores/skipped)
    and return the file's sha256.

    Rows are validated (`normalize_row`); with `n_candidates` (e.g. the gallery size), every "ranked"
    list must hold at least min(50, n_candidates) ids. Query ids must be unique.
    """
    path = Path(path)
    lines = []
    seen: set[str] = set()
    for i, row in enumerate(rows, 1):
        r = normalize_row(row, f"rankings row #{i}")
        if r["query_id"] in seen:
            raise RankingsError(f"rankings row #{i}: duplicate query_id {r['query_id']!r}")
        seen.add(r["query_id"])
        if n_candidates is not None and "ranked" in r and len(r["ranked"]) < required_length(n_candidates):
            raise RankingTooShortError(f"rankings row #{i} (query {r['query_id']!r}): {len(r['ranked'])} ids, "
                                       f"need at least {required_length(n_candidates)}")
        lines.append(json.dumps(r, ensure_ascii=False, separators=(",", ":")))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(line + "\n" for line in lines))
    return file_sha256(path)


def read_rankings(path: str | Path) -> dict[str, dict]:
    """Read a rankings file into {query_id: row}; a malformed line raises `RankingsError` naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RankingsError(f"rankings file {path} not found") from None
    out: dict[str, dict] = {}
    first: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise RankingsError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        r = normalize_row(row, where)
        if r["query_id"] in out:
            raise RankingsError(f"{where}: duplicate query_id {r['query_id']!r} (first on line {first[r['query_id']]})")
        first[r["query_id"]] = lineno
        out[r["query_id"]] = r
    return out


def rows_from_indices(query_ids: Sequence[str], indices, gallery_ids: Sequence[str]) -> list[dict]:
    """Rankings rows from a FAISS-style result matrix: `indices[i, j]` = position in `gallery_ids` of the
    (j+1)-th result of query i; negative entries (FAISS's -1 padding) are dropped."""
    I = np.asarray(indices)
    if I.ndim != 2 or I.shape[0] != len(query_ids):
        raise RankingsError(f"indices must be (n_queries, k) = ({len(query_ids)}, k), got {I.shape}")
    if I.size and I.max() >= len(gallery_ids):
        raise RankingsError(f"index {int(I.max())} out of range for a gallery of {len(gallery_ids)} ids")
    return [{"query_id": q, "ranked": [gallery_ids[j] for j in row if j >= 0]} for q, row in zip(query_ids, I.tolist())]
