"""The workspace schema and its forward migrations.

The schema is a public interface (curators query workspaces with DuckDB directly): names here only ever grow.
Each component owns an ordered list of migrations; a workspace records how many of each it has applied, so an
older workspace is migrated forward on open and nothing in it is lost. Append to a list, never edit an entry
that has shipped.
"""

from __future__ import annotations

CORE_MIGRATIONS: list[str] = [
    # 1: the foundation
    """
    CREATE TABLE IF NOT EXISTS settings (
        key VARCHAR PRIMARY KEY,
        value VARCHAR
    );
    CREATE TABLE IF NOT EXISTS corpora (
        name VARCHAR PRIMARY KEY,
        role VARCHAR NOT NULL CHECK (role IN ('domain', 'general', 'instruction', 'benchmark')),
        source VARCHAR,
        format VARCHAR,
        description VARCHAR,
        created_at TIMESTAMP DEFAULT current_timestamp
    );
    CREATE TABLE IF NOT EXISTS runs (
        run_id VARCHAR PRIMARY KEY,
        step VARCHAR NOT NULL,
        params JSON,
        versions JSON,
        started_at TIMESTAMP NOT NULL,
        ended_at TIMESTAMP,
        status VARCHAR NOT NULL CHECK (status IN ('running', 'ok', 'failed')),
        counts JSON,
        error VARCHAR,
        active BOOLEAN NOT NULL DEFAULT TRUE,
        pid INTEGER
    );
    CREATE TABLE IF NOT EXISTS documents (
        doc_id VARCHAR PRIMARY KEY,
        corpus VARCHAR NOT NULL,
        text VARCHAR NOT NULL,
        kind VARCHAR NOT NULL DEFAULT 'text',
        record JSON,
        char_count INTEGER NOT NULL,
        token_count INTEGER,
        language VARCHAR,
        content_hash VARCHAR NOT NULL,
        source_file VARCHAR,
        source_line BIGINT,
        byte_offset BIGINT,
        repairs VARCHAR,
        run_id VARCHAR
    );
    CREATE TABLE IF NOT EXISTS decisions (
        doc_id VARCHAR NOT NULL,
        step VARCHAR NOT NULL,
        run_id VARCHAR NOT NULL,
        verdict VARCHAR NOT NULL CHECK (verdict IN ('keep', 'drop')),
        reason VARCHAR,
        score DOUBLE,
        threshold DOUBLE,
        details JSON,
        decided_at TIMESTAMP DEFAULT current_timestamp
    );
    CREATE TABLE IF NOT EXISTS ingest_errors (
        file VARCHAR NOT NULL,
        line BIGINT,
        reason VARCHAR NOT NULL,
        byte_offset BIGINT,
        detail VARCHAR,
        corpus VARCHAR,
        run_id VARCHAR,
        recorded_at TIMESTAMP DEFAULT current_timestamp
    );
    CREATE TABLE IF NOT EXISTS ingested_files (
        corpus VARCHAR NOT NULL,
        file VARCHAR NOT NULL,
        sha256 VARCHAR NOT NULL,
        size_bytes BIGINT,
        options JSON,
        run_id VARCHAR,
        documents_added BIGINT,
        errors BIGINT,
        completed_at TIMESTAMP DEFAULT current_timestamp
    );
    """,
    # 2: the audit-trail views. A drop counts while its run is active and succeeded; re-applying a step with a
    # new threshold deactivates its earlier runs, so the current corpus is re-derived without re-ingesting.
    """
    CREATE OR REPLACE VIEW active_drops AS
        SELECT d.* FROM decisions d JOIN runs r USING (run_id)
        WHERE d.verdict = 'drop' AND r.active AND r.status = 'ok';
    CREATE OR REPLACE VIEW current_documents AS
        SELECT doc.* FROM documents doc
        WHERE NOT EXISTS (SELECT 1 FROM active_drops x WHERE x.doc_id = doc.doc_id);
    CREATE OR REPLACE VIEW document_fate AS
        SELECT doc.doc_id, doc.corpus, c.role,
               x.step AS dropped_by, x.reason AS drop_reason, x.score AS drop_score, x.run_id AS drop_run
        FROM documents doc JOIN corpora c ON c.name = doc.corpus
        LEFT JOIN (
            SELECT *, row_number() OVER (PARTITION BY doc_id ORDER BY decided_at) AS rank FROM active_drops
        ) x ON x.doc_id = doc.doc_id AND x.rank = 1;
    """,
]

# Later steps register their own tables here under their component name (e.g. "dedup", "quality").
MIGRATIONS: dict[str, list[str]] = {
    "core": CORE_MIGRATIONS,
}
