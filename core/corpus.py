"""Reading what a workspace holds: corpora and their documents, counted, sampled, searched and shown one at a time.

The Overview and Corpus pages and `studio status` read through these functions; "current" always means what
`core.flow.scope_sql(ws, None)` gives, the documents of wholly ingested files that no active run dropped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from core.flow import funnel, scope_sql, stale_steps
from core.workspace import Workspace

Measure = Literal["characters", "tokens"]
LENGTH_COLUMNS: dict[str, str] = {"characters": "char_count", "tokens": "token_count"}
# A reservoir sample of this many rows bounds a page histogram's cost on large workspaces (the values it reads and
# the points it sends to the browser); the counts beside a histogram are counted in DuckDB over every document.
# 50,000 values put ~600 in each of 80 bins on average, enough for the shape; 200,000 cost the Quality page 0.3 s
# more of DuckDB at 1M documents and four times the points to draw.
HISTOGRAM_SAMPLE_ROWS = 50_000
SEARCH_LIMIT = 500


def corpus_roles(ws: Workspace) -> dict[str, str]:
    """Corpus name -> role, ordered by role and name."""
    return dict(ws.query("SELECT name, role FROM corpora ORDER BY role, name"))


def language_counts(ws: Workspace):  # -> pandas.DataFrame
    """Per corpus and language: documents, current documents, characters, tokens and documents without a token
    count, with the corpus role; ordered by role, corpus and language."""
    current, params = scope_sql(ws, None)
    return ws.df(f"""
        SELECT d.corpus, c.role, coalesce(d.language, '?') AS language, count(*) AS documents,
               count(*) FILTER (WHERE s.doc_id IS NOT NULL) AS current, sum(d.char_count) AS chars,
               sum(d.token_count) AS tokens, count(*) - count(d.token_count) AS untokenised
        FROM documents d JOIN corpora c ON c.name = d.corpus
        LEFT JOIN (SELECT doc_id FROM ({current})) s ON s.doc_id = d.doc_id
        GROUP BY ALL ORDER BY c.role, d.corpus, language""", params)


def sampled(sql: str, rows: int = HISTOGRAM_SAMPLE_ROWS) -> str:
    """`sql` cut to a repeatable reservoir sample of at most `rows` of its rows. The sample is taken of the query's
    result: USING SAMPLE on a join would sample a table before the WHERE."""
    return f"SELECT * FROM ({sql}) USING SAMPLE reservoir({int(rows)} ROWS) REPEATABLE (7)"


def length_sample(ws: Workspace, corpora: Sequence[str], measure: Measure = "characters"):  # -> pandas.DataFrame
    """(corpus, length) of a repeatable sample of the documents of `corpora` that have the measure (token counts
    exist only once `studio tokens` ran)."""
    column = LENGTH_COLUMNS[measure]
    return ws.df(sampled(f"SELECT corpus, {column} AS length FROM documents "
                         f"WHERE corpus IN (SELECT unnest(?::VARCHAR[])) AND {column} IS NOT NULL"), [list(corpora)])


def search_documents(ws: Workspace, text: str, corpora: Sequence[str] = (), current_only: bool = False,
                     limit: int = SEARCH_LIMIT):  # -> pandas.DataFrame
    """Documents containing `text` (case-insensitive), optionally only of `corpora` and only current ones: doc_id,
    corpus, language, characters and the first 160 characters, in corpus and source order, `limit` at most."""
    where = ["contains(lower(d.text), lower(?))"]
    params: list[Any] = [text]
    if corpora:
        where.append("d.corpus IN (SELECT unnest(?::VARCHAR[]))")
        params.append(list(corpora))
    if current_only:
        current, current_params = scope_sql(ws, None)
        where.append(f"d.doc_id IN (SELECT doc_id FROM ({current}))")
        params += current_params
    return ws.df(f"SELECT d.doc_id, d.corpus, d.language, d.char_count, left(d.text, 160) AS excerpt "
                 f"FROM documents d WHERE {' AND '.join(where)} ORDER BY d.corpus, d.source_line LIMIT ?",
                 [*params, limit])


def document(ws: Workspace, doc_id: str) -> dict[str, Any] | None:
    """Every column of a document plus its corpus role, or None for an unknown id."""
    rows = ws.df("SELECT d.*, c.role FROM documents d JOIN corpora c ON c.name = d.corpus WHERE d.doc_id = ?",
                 [doc_id])
    return None if rows.empty else rows.iloc[0].to_dict()


def document_text(ws: Workspace, doc_id: str) -> str | None:
    """A document's text, or None for an unknown id."""
    return ws.scalar("SELECT text FROM documents WHERE doc_id = ?", [doc_id])


def document_texts(ws: Workspace, doc_ids: Sequence[str]) -> dict[str, str]:
    """The texts of some documents by id (a page picks a few documents first, then reads only their texts)."""
    if not doc_ids:
        return {}
    return dict(ws.query("SELECT doc_id, text FROM documents WHERE doc_id IN (SELECT unnest(?::VARCHAR[]))",
                         [list(doc_ids)]))


def workspace_status(ws: Workspace) -> dict[str, Any]:
    """What a workspace holds, as `studio status --json` reports it and the Overview page shows it: corpora with
    their current documents, ingest errors by reason, the latest runs, the flow funnel and the stale steps."""
    corpora = ws.corpora()
    errors = dict(ws.query("SELECT reason, count(*) FROM ingest_errors GROUP BY reason ORDER BY 2 DESC"))
    scope, params = scope_sql(ws, None)
    current = dict(ws.query(f"SELECT corpus, count(*) FROM ({scope}) GROUP BY corpus", params))
    for c in corpora:
        c["current"] = current.get(c["name"], 0)
    runs = ws.runs(limit=10)
    for r in runs:
        r["counts"] = json.loads(r["counts"]) if r["counts"] else {}
        r.pop("params")
    return {
        "workspace": str(ws.path), "tokenizer": ws.tokenizer_name, "schema": ws.schema_version(),
        "documents": sum(c["documents"] for c in corpora), "current_documents": sum(current.values()),
        "corpora": corpora, "ingest_errors": sum(errors.values()), "ingest_errors_by_reason": errors,
        "recent_runs": runs, "flow": funnel(ws).as_dict(), "stale_steps": [s.as_dict() for s in stale_steps(ws)],
    }
