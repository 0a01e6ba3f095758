"""Value graphs: one HNSW graph per value of chosen attributes, beside a FAISS HNSW index (issue 15).

Why: a filter matching a large share of the items (above ``exact_filter_fraction``) is answered by walking the
whole graph with an ID selector. Where the query's neighbourhood holds no matching item - a query for men's
shirts filtered to women's items - the walk spends its efSearch on items it may not return: at 1M items,
gender = Women (0.417 of them) reached recall@30 0.845 at efSearch 512 / 0.417 (README, "Filtered search at 1M,
session 7"). A graph built over the items of one value has matching neighbours everywhere.

Layout: for each attribute named in the index's ``value_graphs`` option, one `IndexIDMap2(IndexHNSWFlat)` per
value code (code -1: the items without that attribute, "unspecified"), holding the vectors of the items with
that value under their labels - the main index's label space, so results need no translation. Every live item
is in the graph of its current value, always (graphs for narrow values too: a value's share changes with adds
and updates, and a filter that small is answered by the exact scan anyway; the cost is one copy of every vector
per attribute).

Stale entries: graphs cannot delete. An entry (label L in the graph of value c of attribute a) is *valid* while L
is alive and its code for a is c. Removing an item, or moving it to another value (`set_attributes`), leaves a
stale entry behind; a graph with stale entries is searched with an ID selector of the matching labels, and is
rebuilt from its valid entries once stale entries exceed ``max_tombstone_fraction`` of it. An item moving back to a
value whose graph still holds its stale entry makes that entry valid again (same label, same vector) instead of
adding a second one. `check` recomputes all of this from the graphs themselves (on load, and in the tests).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from vestis.index.errors import CorruptIndexError

GRAPHS_FILE = "value_graphs.json"
NOT_STORED = -2  # `_Membership.first`: the label is in no graph of this attribute


@dataclass
class Graph:
    index: object  # IndexIDMap2(IndexHNSWFlat), ids = labels
    stale: int = 0  # entries no longer valid (dead label, or the item's value changed)

    @property
    def entries(self) -> int:
        return self.index.ntotal

    @property
    def valid(self) -> int:
        return self.index.ntotal - self.stale

    def labels(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)


@dataclass
class _Membership:
    """Which graphs of one attribute hold an entry for a label: `first[label]` (the code of the graph it was first
    added to, or NOT_STORED), plus `extra[label]` for the few labels that moved and are stored in more than one."""

    first: np.ndarray = field(default_factory=lambda: np.full(0, NOT_STORED, dtype=np.int32))
    extra: dict[int, set[int]] = field(default_factory=dict)

    def reserve(self, n: int) -> None:
        if n > len(self.first):
            grown = np.full(max(n, 2 * len(self.first), 1024), NOT_STORED, dtype=np.int32)
            grown[: len(self.first)] = self.first
            self.first = grown

    def has(self, label: int, code: int) -> bool:
        return label < len(self.first) and (self.first[label] == code or code in self.extra.get(label, ()))

    def store(self, labels: np.ndarray, code: int) -> None:
        self.reserve(int(labels.max()) + 1 if len(labels) else 0)
        fresh = self.first[labels] == NOT_STORED
        self.first[labels[fresh]] = code
        for lab in labels[~fresh].tolist():
            self.extra.setdefault(lab, set()).add(code)

    def drop(self, label: int, code: int) -> None:
        more = self.extra.get(label)
        if self.first[label] == code:
            self.first[label] = more.pop() if more else NOT_STORED
        elif more:
            more.discard(code)
        if more is not None and not more:
            del self.extra[label]


class ValueGraphs:
    """The value graphs of one HNSW index (module docstring). `codes(attr, labels)` gives the items' current value
    codes (-1 unspecified) and `alive` their live flags; both are read from the index's item table, never copied."""

    def __init__(self, attributes: Sequence[str], dim: int, metric: int, M: int, ef_construction: int):
        self.attributes = tuple(attributes)
        self.dim, self.metric, self.M, self.ef_construction = dim, metric, M, ef_construction
        self.graphs: dict[tuple[str, int], Graph] = {}
        self._members = {a: _Membership() for a in self.attributes}

    def __bool__(self) -> bool:
        return bool(self.attributes)

    def _new(self):
        h = faiss.IndexHNSWFlat(self.dim, self.M, self.metric)
        h.hnsw.efConstruction = self.ef_construction
        return faiss.IndexIDMap2(h)

    def graph(self, attr: str, code: int) -> Graph | None:
        return self.graphs.get((attr, code))

    # --- changes --------------------------------------------------------------------------
    def add(self, labels: np.ndarray, x: np.ndarray, codes: Callable[[str, np.ndarray], np.ndarray]) -> None:
        """New live items (labels never seen before) into the graph of their value, per attribute."""
        for attr in self.attributes:
            c = codes(attr, labels)
            for code in np.unique(c).tolist():
                rows = np.flatnonzero(c == code)
                self._insert(attr, code, labels[rows], x[rows])

    def _insert(self, attr: str, code: int, labels: np.ndarray, x: np.ndarray) -> None:
        g = self.graphs.get((attr, code))
        if g is None:
            g = self.graphs[(attr, code)] = Graph(self._new())
        g.index.add_with_ids(np.ascontiguousarray(x, dtype=np.float32), labels)
        self._members[attr].store(labels, code)

    def removing(self, labels: Sequence[int], codes: Callable[[str, np.ndarray], np.ndarray]) -> None:
        """Call before live labels die: their entries turn stale."""
        labs = np.asarray(labels, dtype=np.int64)
        for attr in self.attributes:
            for code in codes(attr, labs).tolist():
                self.graphs[(attr, code)].stale += 1

    def moved(self, labels: np.ndarray, old: dict[str, np.ndarray], codes: Callable[[str, np.ndarray], np.ndarray],
              vectors: Callable[[np.ndarray], np.ndarray]) -> None:
        """Live items whose values changed from `old` (per attribute) to their current codes: the old entry turns
        stale; the new graph gets the vector, or its stale entry for the label back."""
        for attr in self.attributes:
            new = codes(attr, labels)
            changed = np.flatnonzero(new != old[attr])
            add: dict[int, list[int]] = {}
            for j in changed.tolist():
                lab, was, now = int(labels[j]), int(old[attr][j]), int(new[j])
                self.graphs[(attr, was)].stale += 1
                if self._members[attr].has(lab, now):
                    self.graphs[(attr, now)].stale -= 1
                else:
                    add.setdefault(now, []).append(lab)
            for code, labs in add.items():
                la = np.asarray(labs, dtype=np.int64)
                self._insert(attr, code, la, vectors(la))

    def valid_mask(self, attr: str, code: int, graph_labels: np.ndarray, alive: np.ndarray,
                   codes: Callable[[str, np.ndarray], np.ndarray]) -> np.ndarray:
        return alive[graph_labels] & (codes(attr, graph_labels) == code)

    def compact(self, alive: np.ndarray, codes, fraction: float | None = None) -> int:
        """Rebuild the graphs whose stale entries exceed `fraction` of their entries (None: any stale entry) from
        their valid entries. Returns the stale entries dropped."""
        dropped = 0
        for (attr, code), g in list(self.graphs.items()):
            if not g.stale or (fraction is not None and g.stale <= fraction * g.entries):
                continue
            labs = g.labels()
            keep = self.valid_mask(attr, code, labs, alive, codes)
            storage = faiss.downcast_index(faiss.downcast_index(g.index.index).storage)
            x = storage.reconstruct_n(0, storage.ntotal)[keep]
            for lab in labs[~keep].tolist():
                self._members[attr].drop(lab, code)
            new = self._new()
            if len(x):
                new.add_with_ids(np.ascontiguousarray(x), labs[keep])
            dropped += g.stale
            self.graphs[(attr, code)] = Graph(new)
        return dropped

    # --- search -----------------------------------------------------------------------------
    def search(self, graphs: Sequence[Graph], q: np.ndarray, k: int, ef: int, sel, higher_is_better: bool):
        """Each graph's top k (an HNSW walk with efSearch `ef`, with the selector `sel` if given), merged into the
        top k of them all by score: exact, as the graphs hold disjoint sets of valid items."""
        D, L = [], []
        for g in graphs:
            kk = min(k, g.entries)
            if kk == 0:
                continue
            sp = faiss.SearchParametersHNSW(efSearch=ef) if sel is None else \
                faiss.SearchParametersHNSW(efSearch=ef, sel=sel)
            d, lab = g.index.search(q, kk, params=sp)
            D.append(d)
            L.append(lab)
        if not D:
            return np.full((len(q), k), np.nan, np.float32), np.full((len(q), k), -1, np.int64)
        D, L = np.hstack(D), np.hstack(L)
        worst = -np.inf if higher_is_better else np.inf
        key = np.where(L >= 0, D, worst)
        order = np.argsort(-key if higher_is_better else key, axis=1, kind="stable")
        D, L = np.take_along_axis(D, order, 1), np.take_along_axis(L, order, 1)
        if len(graphs) > 1 and sel is not None:
            # a selector of several values passes an item's stale entry in the graph of a value it had before,
            # beside its valid one (the same vector, so the same score): keep one
            for i in range(len(L)):
                labs, first = np.unique(L[i], return_index=True)
                dup = np.ones(L.shape[1], bool)
                dup[first[labs >= 0]] = False
                dup &= L[i] >= 0
                if dup.any():
                    keep = np.concatenate([np.flatnonzero(~dup), np.flatnonzero(dup)])
                    D[i], L[i] = D[i][keep], np.where(dup[keep], -1, L[i][keep])
        D, L = D[:, :k], L[:, :k]
        if D.shape[1] < k:  # fewer entries than k in all: pad as FAISS does
            pad = k - D.shape[1]
            D = np.hstack([D, np.full((len(q), pad), np.nan, np.float32)])
            L = np.hstack([L, np.full((len(q), pad), -1, np.int64)])
        return D, L

    # --- persistence / checks ---------------------------------------------------------------
    def save(self, folder: Path, value_of: Callable[[str, int], str | None]) -> None:
        listed = []
        for i, ((attr, code), g) in enumerate(sorted(self.graphs.items(), key=lambda t: (t[0][0], t[0][1]))):
            name = f"value_graph_{i}.faiss"
            faiss.write_index(g.index, str(folder / name))
            listed.append({"attribute": attr, "value": value_of(attr, code), "file": name, "entries": g.entries})
        (folder / GRAPHS_FILE).write_text(json.dumps({"attributes": list(self.attributes), "graphs": listed},
                                                     ensure_ascii=False), encoding="utf-8")

    def load(self, folder: Path, code_of: Callable[[str, str | None], int | None], alive: np.ndarray, codes,
             where: str) -> None:
        """Read the graphs saved by `save` and `check` them against the item table (CorruptIndexError)."""
        try:
            meta = json.loads((folder / GRAPHS_FILE).read_text(encoding="utf-8"))
            if meta["attributes"] != list(self.attributes):
                raise CorruptIndexError(f"{where}: value graphs are saved for {meta['attributes']}, the manifest's "
                                        f"value_graphs option says {list(self.attributes)}")
            for entry in meta["graphs"]:
                attr, code = entry["attribute"], code_of(entry["attribute"], entry["value"])
                if attr not in self.attributes or code is None:
                    raise CorruptIndexError(f"{where}: a value graph for {attr!r} = {entry['value']!r}, which "
                                            f"the index does not know")
                index = faiss.read_index(str(folder / entry["file"]))
                if index.d != self.dim or index.ntotal != entry["entries"]:
                    raise CorruptIndexError(f"{where}: value graph {entry['file']} has dim {index.d} and "
                                            f"{index.ntotal} entries, {GRAPHS_FILE} says {self.dim} / {entry['entries']}")
                self.graphs[(attr, code)] = Graph(index)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
            raise CorruptIndexError(f"{where}: cannot read the value graphs: {e}") from None
        self.check(alive, codes, where, rebuild=True)

    def check(self, alive: np.ndarray, codes, where: str = "index", rebuild: bool = False) -> None:
        """Recompute membership and stale counts from the graphs' own labels (rebuild=True: set them; else compare)
        and require every live item to have exactly one valid entry per attribute: in the graph of its value."""
        members = {a: _Membership() for a in self.attributes}
        live = np.flatnonzero(alive)
        for attr in self.attributes:
            per_code: dict[int, int] = {}
            for (a, code), g in self.graphs.items():
                if a != attr:
                    continue
                labs = g.labels()
                if len(labs) != len(np.unique(labs)) or (len(labs) and labs.max() >= len(alive)):
                    raise CorruptIndexError(f"{where}: the value graph of {attr!r} code {code} holds a label twice "
                                            f"or an unknown label")
                ok = self.valid_mask(attr, code, labs, alive, codes)
                stale = int(len(labs) - ok.sum())
                if rebuild:
                    g.stale = stale
                elif stale != g.stale:
                    raise CorruptIndexError(f"{where}: value graph {attr!r} code {code}: {stale} stale entries, "
                                            f"{g.stale} counted")
                per_code[code] = int(ok.sum())
                members[attr].store(labs, code)
            want = np.unique(codes(attr, live), return_counts=True) if len(live) else ([], [])
            expected = {int(c): int(n) for c, n in zip(*want)}
            if {c: n for c, n in per_code.items() if n} != expected:
                raise CorruptIndexError(f"{where}: the value graphs of {attr!r} do not hold every live item once "
                                        f"(valid entries per value code {per_code}, live items {expected})")
        if rebuild:
            self._members = members
        else:
            for attr in self.attributes:
                mine, theirs = self._members[attr], members[attr]
                n = max(len(mine.first), len(theirs.first))
                mine.reserve(n)
                theirs.reserve(n)
                if not np.array_equal(mine.first[:n] != NOT_STORED, theirs.first[:n] != NOT_STORED) or \
                        sum(map(len, mine.extra.values())) != sum(map(len, theirs.extra.values())):
                    raise CorruptIndexError(f"{where}: value graph membership of {attr!r} drifted")


def ef_for_share(ef: int, k: int, share: float) -> int:
    """efSearch divided by the share of a graph's entries that can match (capped: at most 4096 or ef / k)."""
    return min(math.ceil(max(ef, k) / share), max(ef, k, 4096))
