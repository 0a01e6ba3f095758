"""Write evaluation reports: `report.json`, a Markdown `report.md` and PNG plots; compare several runs.

A report is the dict `protocols.evaluate` returns (with "run" and "machine" filled by the caller).
Markdown tables put runs in rows; percentages have one decimal (Top-k, Recall@k, triplet accuracy)
or two (MAP, as in AG-MLAN's tables); NDCG is a fraction with four decimals. Plots use matplotlib's
object API on the Agg canvas (no pyplot, no global backend change), so they work on headless machines.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from vestis.eval.errors import EvalError
from vestis.machine import format_machine

GROUP_LABELS = {"all": "all queries", "single": "single-attribute queries", "two": "two-attribute queries"}

Runs = list[tuple[str, dict]]


# --- naming --------------------------------------------------------------------------------------
def run_name(report: Mapping, default: str = "run") -> str:
    """A report's run name: report["run"] if it is a string, report["run"]["name"] if a dict, else `default`."""
    run = report.get("run")
    if isinstance(run, str) and run:
        return run
    if isinstance(run, Mapping) and run.get("name"):
        return str(run["name"])
    return default


def _runs(reports: Sequence[Mapping] | Mapping[str, Mapping], names: Sequence[str] | None = None) -> Runs:
    if isinstance(reports, Mapping):
        return [(str(k), dict(v)) for k, v in reports.items()]
    reports = list(reports)
    if names is not None and len(names) != len(reports):
        raise ValueError(f"{len(names)} names for {len(reports)} reports")
    out = [(names[i] if names is not None else run_name(r, f"run {i + 1}"), dict(r)) for i, r in enumerate(reports)]
    seen: dict[str, int] = {}
    for i, (n, r) in enumerate(out):  # make row labels unique
        if n in seen:
            seen[n] += 1
            out[i] = (f"{n} ({seen[n]})", r)
        else:
            seen[n] = 1
    return out


# --- Markdown ------------------------------------------------------------------------------------
def _pct(x, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}"


def _items(n) -> str:
    return "? items" if n is None else f"{n} item" + ("" if n == 1 else "s")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " if i == 0 else " ---: " for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _header(runs: Runs, title: str) -> list[str]:
    first = runs[0][1]
    out = [f"# {title}", ""]
    sk = first.get("skipped") or {}
    skipped = (", skipped: " + ", ".join(f"{k} {v}" for k, v in sk.items())) if sk else ""
    sha = first.get("query_sha256")
    out += [
        f"- Protocol: `{first.get('protocol')}`",
        f"- Dataset: {first.get('dataset') or '?'}" + (f" ({first['catalog_source']})" if first.get("catalog_source") else "")
        + f"; query split `{first['splits']['query']}`, gallery split `{first['splits']['gallery']}`",
        f"- Labels: {first.get('labels', 'not recorded')}" + {"off": " (vision only: the engine read no catalogue label)",
                                                            "on": " (catalogue-aware ranking)"}.get(first.get("labels"), ""),
        f"- Query file: `{first.get('query_file') or '?'}`" + (f" (sha256 `{sha}`)" if sha else " (sha256 unknown)")
        + f"; {first.get('n_queries')} queries",
    ]
    for name, r in runs:
        line = f"- {name}: labels {r.get('labels', 'not recorded')}, {r.get('n_scored')} scored{skipped if r is first else ''}"
        if r is not first and r.get("skipped"):
            line += ", skipped: " + ", ".join(f"{k} {v}" for k, v in r["skipped"].items())
        if r.get("machine"):
            line += f"; machine: {format_machine(r['machine'])}"
        out.append(line)
    same = first.get("same_item")
    if same and same.get("views"):
        out.append(f"- Multi-view data: {same['views']}")
    out.append("")
    return out


def _manipulation_md(runs: Runs) -> list[str]:
    have = [(n, r["manipulation"]) for n, r in runs if r.get("manipulation")]
    if not have:
        return []
    from vestis.eval.metrics import NDCG_K, TOP_K

    out = ["## Attribute manipulation (protocol 1)", ""]
    groups = list(dict.fromkeys(g for _, m in have for g in m["groups"]))
    shown = groups if len(groups) > 2 else ["all"]  # "all" equals the only group when there is one
    for g in shown:
        rows = []
        for n, m in have:
            s = m["groups"].get(g)
            if s and s.get("top_k"):
                rows.append([n, str(s["n"])] + [_pct(s["top_k"].get(str(k))) for k in TOP_K])
        out += [f"### Top-k accuracy (%), {GROUP_LABELS.get(g, g)}", "",
                _table(["Run", "queries"] + [f"Top-{k}" for k in TOP_K], rows), ""]
    for g in [g for g in ("single", "two") if g in groups] or ["all"]:
        keys = list(dict.fromkeys(k for _, m in have for k in (m["groups"].get(g) or {}).get("per_attribute", {})))
        if not keys:
            continue
        ref = {k: v["n"] for _, m in have[:1] for k, v in (m["groups"].get(g) or {}).get("per_attribute", {}).items()}
        rows = []
        for n, m in have:
            pa = (m["groups"].get(g) or {}).get("per_attribute", {})
            cells = []
            for k in keys:
                v = pa.get(k)
                cell = _pct(v["top_30"]) if v else "-"
                if v and v["n"] != ref.get(k):
                    cell += f" (n={v['n']})"
                cells.append(cell)
            rows.append([n] + cells)
        label = "manipulated attribute" if g != "two" else "manipulated attribute pair"
        out += [f"### Top-30 accuracy (%) per {label}, {GROUP_LABELS.get(g, g)}", "",
                _table(["Run"] + [f"{k} (n={ref.get(k, '-')})" for k in keys], rows), ""]
    for g in shown:
        rows = [[n, str(m["groups"][g]["n"])] + [f"{m['groups'][g]['ndcg'][str(k)]:.4f}" for k in NDCG_K]
                + [f"{m['groups'][g]['asked_at_10']:.3f}" if "asked_at_10" in m["groups"][g] else "-"]
                for n, m in have if m["groups"].get(g, {}).get("ndcg")]
        out += [f"### NDCG@k and asked@10 (share of the top 10 with the requested values), {GROUP_LABELS.get(g, g)}",
                "", _table(["Run", "queries"] + [f"NDCG@{k}" for k in NDCG_K] + ["asked@10"], rows), ""]
    curves = [(n, m["groups"]["all"]["gallery_size_curve"]) for n, m in have
              if m["groups"].get("all", {}).get("gallery_size_curve", {}).get("points")]
    if curves:
        fr = list(dict.fromkeys(p["fraction"] for _, c in curves for p in c["points"]))
        rows = []
        for n, c in curves:
            pts = {p["fraction"]: p for p in c["points"]}
            rows.append([n] + [_pct(pts[f]["top_k"]) if f in pts else "-" for f in fr])
        k = curves[0][1]["k"]
        sizes = {p["fraction"]: p["gallery_size"] for p in curves[0][1]["points"]}
        out += [f"### Gallery-size curve: Top-{k} accuracy (%) on random gallery subsets, all queries", "",
                _table(["Run"] + [f"{100 * f:g} % ({_items(sizes.get(f))})" for f in fr], rows), ""]
    return out


def _per_attribute_md(runs: Runs, section: str, key: str, title: str, digits: int,
                      overall: tuple[str, str] | None = None) -> list[str]:
    """Per-attribute table with the macro mean; `overall` (key, column title) adds the query-weighted one."""
    have = [(n, r[section]) for n, r in runs if r.get(section) and r[section].get("per_attribute")]
    if not have:
        return []
    attrs = list(dict.fromkeys(a for _, s in have for a in s["per_attribute"]))
    extra = [overall[1]] if overall else []
    rows = [[n] + [_pct(s["per_attribute"][a][key], digits) if a in s["per_attribute"] else "-" for a in attrs]
            + [_pct(s.get("mean"), digits)] + ([_pct(s.get(overall[0]), digits)] if overall else []) for n, s in have]
    return [f"### {title}", "", _table(["Run"] + attrs + ["mean"] + extra, rows), ""]


def _protocol2_md(runs: Runs) -> list[str]:
    out = _per_attribute_md(runs, "attribute", "map", "MAP (%) per attribute; mean: of the attributes (macro), "
                            "over queries: of all queries (the published tables' headline)", 2,
                            ("mean_over_queries", "over queries"))
    out += _per_attribute_md(runs, "triplet", "accuracy", "Triplet accuracy (%) per attribute (ties count as wrong)", 1,
                             ("overall", "over triplets"))
    return (["## Attribute-specific similarity (protocol 2)", ""] + out) if out else []


def _same_item_md(runs: Runs) -> list[str]:
    from vestis.eval.metrics import TOP_K

    out = []
    have = [(n, r["same_item"]) for n, r in runs if r.get("same_item", {}).get("recall_at_k")]
    if have:
        rows = [[n, str(s["n_scored"])] + [_pct(s["recall_at_k"].get(str(k))) for k in TOP_K] for n, s in have]
        out += ["### Recall@k (%): share of queries with a same-instance image in the top k", "",
                _table(["Run", "queries"] + [f"R@{k}" for k in TOP_K], rows), ""]
    cls = [(n, r["classification"]) for n, r in runs if r.get("classification")]
    if cls:
        ks = list(dict.fromkeys(k for _, c in cls for k in c["top_k"]))
        rows = [[n, str(c["n"])] + [_pct(c["top_k"].get(k)) for k in ks] for n, c in cls]
        out += ["### Category classification accuracy (%)", "", _table(["Run", "images"] + [f"Top-{k}" for k in ks], rows), ""]
    levels = [(n, r["classification"], r["classification_levels"]) for n, r in runs if r.get("classification_levels")]
    if levels:  # Park et al.'s Table 2 layout: one row per run, top-1/3/5 per category level
        names = list(dict.fromkeys(a for _, _, lv in levels for a in lv))
        ks = list(dict.fromkeys(k for _, c, _ in levels for k in c["top_k"]))
        rows = [[n, str(c["n"])] + [_pct(c["top_k"].get(k)) for k in ks]
                + [_pct(lv[a]["top_k"].get(k)) if a in lv else "-" for a in names for k in ks] for n, c, lv in levels]
        out += ["### Category classification by level (%, the finer classifier's probabilities summed per level)", "",
                _table(["Run", "images"] + [f"category Top-{k}" for k in ks] + [f"{a} Top-{k}" for a in names for k in ks],
                       rows), ""]
    return (["## Same-item retrieval (protocol 3)", ""] + out) if out else []


def _c2s_md(runs: Runs) -> list[str]:
    have = [(n, r["consumer_to_shop"], r.get("labels", "?")) for n, r in runs
            if r.get("consumer_to_shop", {}).get("per_category")]
    if not have:
        return []
    cats = list(dict.fromkeys(c for _, s, _ in have for c in s["per_category"]))
    rows = [[f"{n} (labels {lab})", str(s["n_scored"]), f"{s['precision']:.3f}", f"{s['precision_macro']:.3f}"]
            + [f"{s['per_category'][c]['precision']:.3f}" if c in s["per_category"] else "-" for c in cats]
            for n, s, lab in have]
    out = ["## Consumer-to-shop (photo queries against the gallery)", "",
           f"### P@{have[0][1]['k']}: share of the top {have[0][1]['k']} whose mapped attribute is in the photo's "
           "category's set", "",
           _table(["Run", "queries", "mean", "mean of categories"] + cats, rows), ""]
    acc = [(n, r["mapped_accuracy"]) for n, r in runs if r.get("mapped_accuracy")]
    if acc:
        rows = [[n, str(a["n"]), _pct(a["accuracy"])] + [_pct(a["per_category"].get(c, {}).get("accuracy"))
                                                         for c in cats] for n, a in acc]
        out += ["### Category accuracy (%): the run's most likely value is in the photo's category's set", "",
                _table(["Run", "photos", "all"] + cats, rows), ""]
    return out


def _diverse_md(runs: Runs) -> list[str]:
    have = [(n, r["diverse"]) for n, r in runs if r.get("diverse")]
    if not have:
        return []

    def f(x, digits=3):
        return "-" if x is None else f"{x:.{digits}f}"

    rows = [[n, str(d["n_scored"]), f(d["coverage"]), f(d["ild"]), f(d["distinct_categories"], 2),
             f(d.get("purity@5")), f(d.get("groups_per_query"), 2), f(d.get("false_group_share")),
             f(d.get("group_box_iou"))] for n, d in have]
    out = ["## Diverse part-based suggestions (protocol 4)", "",
           "List: the first N = 5 x garments ids of `ranked` (the groups round-robin, or a flat list). Groups: "
           "purity@5, groups per query, share of groups naming no garment of the photo, IoU of a group's box with "
           "its garment's.", "",
           _table(["Run", "queries", "coverage", "ILD", "distinct categories", "purity@5", "groups / query",
                   "false groups", "group box IoU"], rows), ""]
    rel = [(n, d["part_relevance"]) for n, d in have if d.get("part_relevance")]
    if rel:
        keys = list(dict.fromkeys(k for _, r in rel for k in r))
        out += [f"### Part relevance: share of a group's first {have[0][1].get('part_k', 10)} results equal to its "
                "garment on", "", _table(["Run"] + keys, [[n] + [f(r.get(k)) for k in keys] for n, r in rel]), ""]
    return out


def _markdown(runs: Runs, title: str) -> str:
    lines = (_header(runs, title) + _manipulation_md(runs) + _protocol2_md(runs) + _same_item_md(runs)
             + _c2s_md(runs) + _diverse_md(runs))
    return "\n".join(lines).rstrip() + "\n"


def report_markdown(report: Mapping) -> str:
    """One run's report as Markdown (header with protocol, dataset, splits, query file sha256, machine)."""
    name = run_name(report)
    return _markdown([(name, dict(report))], f"Evaluation report: {name}")


def _check_comparable(runs: Runs, allow_mixed: bool) -> list[str]:
    diffs = []
    for key in ("protocol", "dataset", "query_sha256", "splits"):
        vals = {json.dumps(r.get(key), sort_keys=True) for _, r in runs}
        if len(vals) > 1:
            diffs.append(key)
    if diffs and not allow_mixed:
        raise EvalError(f"reports differ in {', '.join(diffs)}: their figures are not comparable; pass "
                        "allow_mixed=True to tabulate them anyway")
    return diffs


def comparison_markdown(reports: Sequence[Mapping] | Mapping[str, Mapping], names: Sequence[str] | None = None,
                        title: str = "Comparison", allow_mixed: bool = False) -> str:
    """Several runs' reports as one Markdown document, one row per run in every table.

    Runs must share protocol, dataset, splits and query file (sha256); otherwise `EvalError`, unless
    `allow_mixed` (then a warning line names what differs).
    """
    runs = _runs(reports, names)
    if not runs:
        raise EvalError("no reports to compare")
    diffs = _check_comparable(runs, allow_mixed)
    md = _markdown(runs, title)
    if diffs:
        md = md.replace("\n\n", f"\n\n**Warning: these runs differ in {', '.join(diffs)}; their figures are not "
                                "directly comparable.**\n\n", 1)
    return md


# --- plots ---------------------------------------------------------------------------------------
def _figure(ncols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * ncols, 3.9), dpi=110, layout="constrained")
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _style(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.set_ylim(-2, 102)
    ax.grid(True, alpha=0.3)


def plot_top_k(reports: Sequence[Mapping] | Mapping[str, Mapping], path: str | Path,
               names: Sequence[str] | None = None) -> Path | None:
    """Top-k accuracy curves (x = k, y = Top-k %, one line per run), as in FashionSearchNet / AMNet's
    figures; one panel per query group (single / two-attribute) when both exist. None if no run has
    protocol-1 results."""
    from vestis.eval.metrics import TOP_K

    runs = [(n, r["manipulation"]) for n, r in _runs(reports, names) if r.get("manipulation")]
    if not runs:
        return None
    groups = list(dict.fromkeys(g for _, m in runs for g in m["groups"]))
    panels = [g for g in groups if g != "all"] if len(groups) > 2 else ["all"]
    fig, axes = _figure(len(panels))
    for ax, g in zip(axes, panels):
        for n, m in runs:
            s = m["groups"].get(g)
            if s and s.get("top_k"):
                ax.plot(TOP_K, [100 * s["top_k"][str(k)] for k in TOP_K], marker="o", ms=4, label=n)
        _style(ax, "k", "Top-k accuracy (%)", f"Attribute manipulation: {GROUP_LABELS.get(g, g)}")
        ax.set_xticks(TOP_K)
        ax.legend(fontsize=8, loc="lower right")
    path = Path(path)
    fig.savefig(path)
    return path


def plot_gallery_size(reports: Sequence[Mapping] | Mapping[str, Mapping], path: str | Path,
                      names: Sequence[str] | None = None) -> Path | None:
    """Gallery-size curve (AMNet Fig. 6): x = share of the gallery searched (%), y = Top-20 accuracy (%),
    one line per run. None if no run has the curve."""
    runs = [(n, r["manipulation"]["groups"]["all"]["gallery_size_curve"]) for n, r in _runs(reports, names)
            if r.get("manipulation") and r["manipulation"]["groups"].get("all", {}).get("gallery_size_curve", {}).get("points")]
    if not runs:
        return None
    fig, (ax,) = _figure()
    for n, c in runs:
        ax.plot([100 * p["fraction"] for p in c["points"]], [100 * p["top_k"] for p in c["points"]], marker="o", ms=4, label=n)
    k = runs[0][1]["k"]
    _style(ax, "gallery searched (%)", f"Top-{k} accuracy (%)", f"Top-{k} accuracy vs gallery size")
    ax.set_xticks([100 * p["fraction"] for p in runs[0][1]["points"]])
    ax.set_xlim(0, 105)
    ax.legend(fontsize=8, loc="lower left")
    path = Path(path)
    fig.savefig(path)
    return path


def plot_recall(reports: Sequence[Mapping] | Mapping[str, Mapping], path: str | Path,
                names: Sequence[str] | None = None) -> Path | None:
    """Recall@k curves for same-item retrieval (x = k, y = Recall@k %, one line per run)."""
    from vestis.eval.metrics import TOP_K

    runs = [(n, r["same_item"]) for n, r in _runs(reports, names) if r.get("same_item", {}).get("recall_at_k")]
    if not runs:
        return None
    fig, (ax,) = _figure()
    for n, s in runs:
        ax.plot(TOP_K, [100 * s["recall_at_k"][str(k)] for k in TOP_K], marker="o", ms=4, label=n)
    _style(ax, "k", "Recall@k (%)", "Same-item retrieval")
    ax.set_xticks(TOP_K)
    ax.legend(fontsize=8, loc="lower right")
    path = Path(path)
    fig.savefig(path)
    return path


def _plots(reports, out_dir: Path, names=None) -> dict[str, Path]:
    out = {}
    for key, fn in (("top_k", plot_top_k), ("gallery_size", plot_gallery_size), ("recall", plot_recall)):
        p = fn(reports, out_dir / f"{key}.png", names)
        if p is not None:
            out[key] = p
    return out


# --- files ---------------------------------------------------------------------------------------
def write_report(report: Mapping, out_dir: str | Path) -> dict[str, Path]:
    """Write `report.json`, `report.md` and the plots that apply (top_k.png, gallery_size.png, recall.png)
    into `out_dir`; returns {kind: path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md"}
    paths["json"].write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["markdown"].write_text(report_markdown(report), encoding="utf-8")
    paths.update(_plots([report], out_dir, [run_name(report)]))
    return paths


def read_report(path: str | Path) -> dict:
    """Read a `report.json` (or the folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise EvalError(f"cannot read report {path}: {e}") from None


def compare_reports(reports: Sequence[Mapping] | Mapping[str, Mapping], out_dir: str | Path,
                    names: Sequence[str] | None = None, title: str = "Comparison",
                    allow_mixed: bool = False) -> dict[str, Path]:
    """Combine several runs' reports: `comparison.md` (one row per run in every table),
    `comparison.json` ({run name: report}) and the plots with one line per run; returns {kind: path}."""
    runs = _runs(reports, names)
    md = comparison_markdown(dict(runs), title=title, allow_mixed=allow_mixed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "comparison.json", "markdown": out_dir / "comparison.md"}
    paths["json"].write_text(json.dumps(dict(runs), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["markdown"].write_text(md, encoding="utf-8")
    paths.update(_plots(dict(runs), out_dir))
    return paths
