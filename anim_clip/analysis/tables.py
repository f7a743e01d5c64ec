"""Rich tables of the analysis reports (the JSON files hold everything; tables show the gist). Shares
(hit rates, purities, explained variance) are fractions in the JSON and percent here; cosines and
correlations have no unit."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from anim_clip.ui import table


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(share: float | None) -> str:
    """A share (hit rate, purity, explained variance; fractions in the JSON) as the tables show it."""
    return "-" if share is None else f"{100 * share:.1f}"


def _yes(flag: bool | None) -> str:
    return "" if flag is None else ("yes" if flag else "[red]no[/]")


def space_table(meta: dict[str, Any], device: str) -> Table:
    index, cond = meta["index"], meta["conditions"]
    rows = [("checkpoint", meta["checkpoint"]["path"]), ("checkpoint sha256", meta["checkpoint"]["sha256"][:16]),
            ("conditions", (f"{cond['count']} (no species, {len(meta['species'])} species, "
                            f"{len(cond['species_sets'])} species sets)")),
            ("actions", len(meta["actions"])), ("prompts", f"{index['rows']} × {index['dim']}"),
            ("index", f"{index['kind']} on {device}"
             + "".join(f", {k} {v}" for k, v in index.items() if k not in ("kind", "rows", "dim")))]
    return table("prompt space", ["", "value"], rows)


def neighbors_tables(report: dict[str, Any]) -> list[Table]:
    q = report["query"]
    within = table(f"actions nearest to {q['action']!r} for {q['species']}", ["action", "cosine", "performable"],
                   [(r["action"], _f(r["cosine"]), _yes(r["performable"])) for r in report["within_species"]])
    anywhere = table(f"prompts nearest to {q['action']!r} ({q['species']}) anywhere "
                     f"({report['index']['kind']} index, {report['index']['device']})",
                     ["species", "action", "cosine"],
                     [(r["species"], r["action"], _f(r["cosine"])) for r in report["anywhere"]])
    return [within, anywhere]


def confusable_tables(report: dict[str, Any], shown: int = 3) -> list[Table]:
    """Overall pairs, then the first ``shown`` species (or the one asked for)."""
    out = []
    if report["overall"]:
        out.append(table("most confusable action pairs over all species", ["pair", "mean cosine", "max cosine",
                                                                          "closest in"],
                         [(" / ".join(r["actions"]), _f(r["mean_cosine"]), _f(r["max_cosine"]), r["closest_in"])
                          for r in report["overall"]]))
    per = report["per_species"]
    for label in list(per)[: shown if report["overall"] else len(per)]:
        out.append(table(f"most confusable action pairs for {label}", ["pair", "cosine"],
                         [(" / ".join(r["actions"]), _f(r["cosine"])) for r in per[label]]))
    return out


def spread_tables(report: dict[str, Any], shown: int = 20) -> list[Table]:
    columns = ["action", "mean pairwise cos", "performers (cos)", "cos to unconditioned", "between actions",
               "drift / separation", "outlier species"]

    def row(s: dict[str, Any]) -> tuple:
        return (s["action"], _f(s["mean_pairwise_cosine"]),
                f"{s['performers']} ({_f(s['performers_mean_pairwise_cosine'])})",
                _f(s["mean_cosine_to_unconditioned"]), _f(s["between_actions_mean_cosine"]),
                _f(s["drift_vs_separation"]), f"{s['outlier_species']} ({_f(s['outlier_cosine_to_centroid'])})")

    if "actions" in report:
        return [table(f"spread of each action's prompt across species (most category-specific first; "
                      f"{min(shown, len(report['actions']))} of {len(report['actions'])})", columns,
                      [row(s) for s in report["actions"][:shown]])]
    pair = report["farthest_pair"]
    species = table(f"{report['summary']['action']} per species (farthest from the centroid first); farthest "
                    f"pair {' / '.join(pair['species'])} at {_f(pair['cosine'])}",
                    ["species", "cos to centroid", "cos to unconditioned", "performs"],
                    [(s["species"], _f(s["cosine_to_centroid"]), _f(s["cosine_to_unconditioned"]), _yes(s["performs"]))
                     for s in report["species"][:shown]])
    return [table("spread across species", columns, [row(report["summary"])]), species]


def clip_tables(report: dict[str, Any]) -> list[Table]:
    predicted = ", predicted" if report["species_source"] == "predicted" else ""
    who = f"{report['clip']} ({' + '.join(report['species']) or 'no species'}{predicted})"
    logits = table(f"{who}: top actions by logit", ["action", "logit", "prob", "cosine rank", "performable", "true"],
                   [(r["action"], _f(r["logit"], 2), _f(r["probability"]), r["cosine_rank"], _yes(r["performable"]),
                     _yes(r["true"])) for r in report["by_logit"]])
    under = "under its predicted species vector (soft)" if predicted else "of its species"
    prompts = table(f"{who}: nearest prompts {under}", ["action", "cosine", "logit rank", "performable", "true"],
                    [(r["action"], _f(r["cosine"]), r["logit_rank"], _yes(r["performable"]), _yes(r["true"]))
                     for r in report["by_prompt"]])
    anywhere = table(f"{who}: nearest prompts anywhere (performable: by that row's species)",
                     ["species", "action", "cosine", "performable"],
                     [(r["species"], r["action"], _f(r["cosine"]), _yes(r["performable"])) for r in report["anywhere"]])
    return [logits, prompts, anywhere]


def confusions_tables(report: dict[str, Any]) -> list[Table]:
    hits, rho = report["neighbour_hits"], report["spearman"]
    summary = table(f"confusions vs prompt similarity on {report['split']}", ["", "value"], [
        ("clips / top-1 errors", f"{report['clips']} / {report['errors']}"),
        ("confused pairs", f"{report['confused_pairs']} of {report['pairs']}"),
        ("Spearman rho (p)", f"{_f(rho['rho'])} ({_f(rho['p_value'], 4)})"),
        (f"prediction among the true action's {hits['k']} nearest prompts (%)",
         f"{_pct(hits['rate'])} (chance {_pct(hits['chance'])})"),
        ("mean neighbour rank of the prediction", _f(hits["mean_rank"], 2)),
    ])
    pairs = table("most confused pairs", ["pair", "confusions", "first→second", "second→first", "cosine",
                                          f"similarity rank (of {report['pairs']})"],
                  [(" / ".join(r["actions"]), _f(r["confusions"], 1), _f(r["first_as_second"], 1),
                    _f(r["second_as_first"], 1), _f(r["cosine"]), r["similarity_rank"]) for r in report["top_pairs"]])
    return [summary, pairs]


def map_table(report: dict[str, Any]) -> Table:
    return table("prompt-space map", ["", "value"], [
        ("PNG", report["png"]),
        ("explained variance (PC1, PC2; %)", " / ".join(_pct(v) for v in report["explained_variance"])),
        ("k-means clusters (sizes)", f"{report['clusters']} ({', '.join(map(str, report['cluster_sizes']))})"),
        ("action purity of clusters (%)", _pct(report["action_purity"])),
        ("species purity of clusters (%)", _pct(report["species_purity"])),
    ])
