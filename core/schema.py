"""The workspace schema and its forward migrations.

The schema is a public interface (curators query workspaces with DuckDB directly): names here only ever grow.
Each component owns an ordered list of migrations; a workspace records how many of each it has applied, so an
older workspace is migrated forward on open and nothing in it is lost. Append to a list, never edit an entry
that has shipped.
"""

from __future__ import annotations

from core.quality_signals import SIGNAL_NAMES

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
    # 3: ingest commits batch by batch; a file is complete once its ingested_files row (with the path its
    # documents carry in source_file) exists, so a killed ingest's partial files can be found and removed.
    """
    ALTER TABLE ingested_files ADD COLUMN IF NOT EXISTS source_file VARCHAR;
    """,
    # 4: readers never see a half-ingested file. A document counts once its file's ingested_files row exists or
    # its run finished; the partial documents of an ingest that is running or was killed stay out of every view
    # until the next writer removes them (read-only readers cannot).
    """
    CREATE OR REPLACE VIEW complete_documents AS
        SELECT doc.* FROM documents doc
        WHERE doc.run_id IS NULL
           OR doc.run_id NOT IN (SELECT run_id FROM runs WHERE status <> 'ok')
           OR EXISTS (SELECT 1 FROM ingested_files f WHERE f.run_id = doc.run_id
                      AND f.source_file = doc.source_file);
    CREATE OR REPLACE VIEW current_documents AS
        SELECT doc.* FROM complete_documents doc
        WHERE NOT EXISTS (SELECT 1 FROM active_drops x WHERE x.doc_id = doc.doc_id);
    CREATE OR REPLACE VIEW document_fate AS
        SELECT doc.doc_id, doc.corpus, c.role,
               x.step AS dropped_by, x.reason AS drop_reason, x.score AS drop_score, x.run_id AS drop_run
        FROM complete_documents doc JOIN corpora c ON c.name = doc.corpus
        LEFT JOIN (
            SELECT *, row_number() OVER (PARTITION BY doc_id ORDER BY decided_at) AS rank FROM active_drops
        ) x ON x.doc_id = doc.doc_id AND x.rank = 1;
    """,
    # 5: the same current documents as an anti join: DuckDB planned the NOT EXISTS over complete_documents' OR
    # badly (0.7 s against 0.05 s to count 1M documents, bench/scale.py), and every page reads this view.
    """
    CREATE OR REPLACE VIEW current_documents AS
        SELECT doc.* FROM complete_documents doc
        ANTI JOIN active_drops x ON x.doc_id = doc.doc_id;
    """,
]

# Benchmarks, eval-driven recall and decontamination (core/benchmarks.py, core/recall.py, core/decontam.py).
BENCHMARK_MIGRATIONS: list[str] = [
    # 1: benchmarks and their items; recall results per run; contamination evidence; item flags.
    """
    CREATE TABLE IF NOT EXISTS benchmarks (
        corpus VARCHAR PRIMARY KEY,
        kind VARCHAR NOT NULL CHECK (kind IN ('domain', 'general')),
        description VARCHAR,
        subjects JSON,
        items INTEGER,
        registered_at TIMESTAMP DEFAULT current_timestamp
    );
    CREATE TABLE IF NOT EXISTS benchmark_items (
        doc_id VARCHAR PRIMARY KEY,
        corpus VARCHAR NOT NULL,
        item_id VARCHAR,
        subject VARCHAR,
        question VARCHAR,
        choices JSON,
        answer_index INTEGER,
        answer VARCHAR,
        item_text VARCHAR,
        format VARCHAR
    );
    CREATE TABLE IF NOT EXISTS recall_candidates (
        run_id VARCHAR NOT NULL,
        doc_id VARCHAR NOT NULL,
        corpus VARCHAR,
        tokens BIGINT,
        best_item VARCHAR,
        best_similarity FLOAT
    );
    CREATE TABLE IF NOT EXISTS recall_hits (
        run_id VARCHAR NOT NULL,
        item_doc_id VARCHAR NOT NULL,
        doc_id VARCHAR NOT NULL,
        rank INTEGER,
        similarity FLOAT
    );
    CREATE TABLE IF NOT EXISTS recall_set (
        run_id VARCHAR NOT NULL,
        doc_id VARCHAR NOT NULL,
        best_item VARCHAR,
        best_similarity FLOAT,
        items_hit INTEGER
    );
    CREATE TABLE IF NOT EXISTS recall_control (
        run_id VARCHAR NOT NULL,
        doc_id VARCHAR NOT NULL
    );
    CREATE TABLE IF NOT EXISTS recall_item_stats (
        run_id VARCHAR NOT NULL,
        item_doc_id VARCHAR NOT NULL,
        corpus VARCHAR,
        subject VARCHAR,
        hits INTEGER,
        capped INTEGER,
        best_similarity FLOAT
    );
    CREATE TABLE IF NOT EXISTS contamination (
        run_id VARCHAR NOT NULL,
        doc_id VARCHAR NOT NULL,
        item_doc_id VARCHAR NOT NULL,
        benchmark VARCHAR,
        span_start INTEGER,
        span_end INTEGER,
        ngram VARCHAR,
        span_text VARCHAR
    );
    CREATE TABLE IF NOT EXISTS benchmark_item_flags (
        run_id VARCHAR NOT NULL,
        item_doc_id VARCHAR NOT NULL,
        flag VARCHAR NOT NULL CHECK (flag IN ('lexical', 'near')),
        doc_id VARCHAR,
        score DOUBLE,
        evidence VARCHAR
    );
    CREATE OR REPLACE VIEW latest_recall_run AS
        SELECT run_id FROM runs WHERE step = 'recall' AND active AND status = 'ok'
        ORDER BY started_at DESC LIMIT 1;
    CREATE OR REPLACE VIEW latest_decontam_run AS
        SELECT run_id FROM runs WHERE step = 'decontam' AND active AND status = 'ok'
        ORDER BY started_at DESC LIMIT 1;
    CREATE OR REPLACE VIEW recalled_documents AS
        SELECT s.doc_id, s.best_item, s.best_similarity FROM recall_set s
        WHERE s.run_id = (SELECT run_id FROM latest_recall_run)
          AND s.doc_id IN (SELECT doc_id FROM current_documents);
    CREATE OR REPLACE VIEW control_documents AS
        SELECT c.doc_id FROM recall_control c
        WHERE c.run_id = (SELECT run_id FROM latest_recall_run)
          AND c.doc_id IN (SELECT doc_id FROM current_documents);
    CREATE OR REPLACE VIEW flagged_benchmark_items AS
        SELECT f.* FROM benchmark_item_flags f
        WHERE f.run_id IN (SELECT run_id FROM latest_recall_run UNION ALL SELECT run_id FROM latest_decontam_run);
    CREATE OR REPLACE VIEW clean_benchmark_items AS
        SELECT i.* FROM benchmark_items i
        WHERE i.doc_id NOT IN (SELECT item_doc_id FROM flagged_benchmark_items);
    """,
]

# The shared embedding cache (core/embed.py): one vector per (model and truncation, raw text hash), so semantic
# dedup and recall never embed an unchanged text twice.
EMBED_MIGRATIONS: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS embeddings (
        model_key VARCHAR NOT NULL,
        text_hash VARCHAR NOT NULL,
        dim INTEGER NOT NULL,
        vector FLOAT[] NOT NULL,
        created_at TIMESTAMP DEFAULT current_timestamp,
        PRIMARY KEY (model_key, text_hash)
    );
    """,
]

# Terminology density (core/terms.py): hits and density per document per scoring run. `current_term_density`
# (doc_id, density) is read by the quality composite for relevance: keep its name and columns.
TERMS_MIGRATIONS: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS term_hits (
        doc_id VARCHAR NOT NULL,
        run_id VARCHAR NOT NULL,
        lexicon VARCHAR NOT NULL,
        unit VARCHAR NOT NULL CHECK (unit IN ('word', 'char')),
        units INTEGER NOT NULL,
        hits INTEGER NOT NULL,
        weighted_hits DOUBLE NOT NULL,
        density DOUBLE NOT NULL,
        terms JSON
    );
    CREATE OR REPLACE VIEW current_term_hits AS
        SELECT h.* FROM term_hits h
        WHERE h.run_id = (SELECT run_id FROM runs WHERE step = 'terms_score' AND active AND status = 'ok'
                          ORDER BY started_at DESC LIMIT 1);
    CREATE OR REPLACE VIEW current_term_density AS
        SELECT doc_id, density FROM current_term_hits;
    """,
]

MIX_MIGRATIONS: list[str] = [
    # 1: mixes and their membership. A mix is a run of step 'mix' (mix_id = run_id); mix_members holds every
    # document of it in order (split 'train' or 'validation_<role>'), so reports and training find the exact
    # documents, their component, phase and repeat copy, and what decontamination did to each.
    """
    CREATE TABLE IF NOT EXISTS mixes (
        mix_id VARCHAR PRIMARY KEY,
        name VARCHAR NOT NULL,
        recipe JSON,
        seed BIGINT,
        export_dir VARCHAR,
        manifest_sha256 VARCHAR,
        train_documents BIGINT,
        train_tokens BIGINT,
        created_at TIMESTAMP DEFAULT current_timestamp
    );
    CREATE TABLE IF NOT EXISTS mix_members (
        mix_id VARCHAR NOT NULL,
        split VARCHAR NOT NULL,
        position BIGINT NOT NULL,
        doc_id VARCHAR NOT NULL,
        component VARCHAR,
        phase VARCHAR,
        copy INTEGER NOT NULL DEFAULT 0,
        corpus VARCHAR,
        tokens BIGINT,
        decontam VARCHAR,
        removed_chars BIGINT
    );
    CREATE OR REPLACE VIEW latest_mix_members AS
        SELECT m.* FROM mix_members m
        WHERE m.mix_id = (SELECT x.mix_id FROM mixes x JOIN runs r ON r.run_id = x.mix_id
                          WHERE r.status = 'ok' ORDER BY r.ended_at DESC LIMIT 1);
    """,
]

# Quality (core/quality.py): raw heuristic signals per document (long format, so thresholds move without
# recomputing), perplexity per document and model, and the composite score. `quality_composite(doc_id, score)`
# is read by the dedup step's "best quality" representative policy: keep its name and columns. Relevance is read
# live from the terms step's `current_term_density`, so the composite follows the latest terminology run.
QUALITY_MIGRATIONS: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS quality_scored (
        doc_id VARCHAR PRIMARY KEY,
        language_group VARCHAR NOT NULL,
        signals_version INTEGER NOT NULL,
        informativeness DOUBLE,
        safety DOUBLE,
        run_id VARCHAR
    );
    CREATE TABLE IF NOT EXISTS quality_signals (
        doc_id VARCHAR NOT NULL,
        signal VARCHAR NOT NULL,
        value DOUBLE,
        run_id VARCHAR
    );
    CREATE TABLE IF NOT EXISTS quality_perplexity (
        doc_id VARCHAR NOT NULL,
        model VARCHAR NOT NULL,
        max_tokens INTEGER NOT NULL,
        dtype VARCHAR,
        tokens INTEGER,
        perplexity DOUBLE,
        run_id VARCHAR,
        computed_at TIMESTAMP DEFAULT current_timestamp
    );
    CREATE TABLE IF NOT EXISTS quality_weights (
        relevance DOUBLE NOT NULL,
        fluency DOUBLE NOT NULL,
        informativeness DOUBLE NOT NULL,
        safety DOUBLE NOT NULL
    );
    INSERT INTO quality_weights SELECT 0.3, 0.2, 0.3, 0.2 WHERE NOT EXISTS (SELECT 1 FROM quality_weights);
    CREATE OR REPLACE VIEW quality_perplexity_latest AS
        SELECT * EXCLUDE (pick) FROM (
            SELECT *, row_number() OVER (PARTITION BY doc_id ORDER BY computed_at DESC, run_id DESC) AS pick
            FROM quality_perplexity)
        WHERE pick = 1;
    CREATE OR REPLACE VIEW quality_parts AS
        WITH density AS (
            SELECT doc_id, max(density) AS density FROM current_term_density GROUP BY doc_id),
        relevance AS (
            SELECT q.doc_id,
                   CASE WHEN t.density <= 0 THEN 0.0 ELSE cume_dist() OVER (
                       PARTITION BY q.language_group, t.density > 0 ORDER BY t.density) END AS relevance
            FROM quality_scored q JOIN density t USING (doc_id)),
        fluency AS (
            SELECT q.doc_id,
                   1.0 - percent_rank() OVER (PARTITION BY q.language_group ORDER BY p.perplexity) AS fluency
            FROM quality_scored q JOIN quality_perplexity_latest p USING (doc_id)
            WHERE p.perplexity IS NOT NULL)
        SELECT q.doc_id, q.language_group, r.relevance, f.fluency, q.informativeness, q.safety
        FROM quality_scored q LEFT JOIN relevance r USING (doc_id) LEFT JOIN fluency f USING (doc_id);
    CREATE OR REPLACE VIEW quality_composite AS
        SELECT p.doc_id,
               (coalesce(w.relevance * p.relevance, 0) + coalesce(w.fluency * p.fluency, 0)
                + coalesce(w.informativeness * p.informativeness, 0) + coalesce(w.safety * p.safety, 0))
               / nullif(CASE WHEN p.relevance IS NULL THEN 0 ELSE w.relevance END
                        + CASE WHEN p.fluency IS NULL THEN 0 ELSE w.fluency END
                        + CASE WHEN p.informativeness IS NULL THEN 0 ELSE w.informativeness END
                        + CASE WHEN p.safety IS NULL THEN 0 ELSE w.safety END, 0) AS score
        FROM quality_parts p CROSS JOIN (SELECT * FROM quality_weights LIMIT 1) w;
    CREATE OR REPLACE VIEW quality_values AS
        SELECT doc_id, signal, value FROM quality_signals
        UNION ALL
        SELECT doc_id, 'perplexity' AS signal, perplexity AS value FROM quality_perplexity_latest
        WHERE perplexity IS NOT NULL
        UNION ALL
        SELECT doc_id, 'composite' AS signal, score AS value FROM quality_composite WHERE score IS NOT NULL;
    """,
    # 2: the raw signals one row per document and a column per signal (`quality_signal_values`): a filter checks
    # every rule in one pass over a million rows instead of joining 30 million (doc_id, signal) rows, which cost
    # the Quality page a second at 1M documents. `quality_signals` stays, as a view, in its long format.
    f"""
    CREATE TABLE IF NOT EXISTS quality_signal_values (
        doc_id VARCHAR NOT NULL,
        run_id VARCHAR,
        {", ".join(f'"{name}" DOUBLE' for name in SIGNAL_NAMES)}
    );
    INSERT INTO quality_signal_values
        SELECT doc_id, any_value(run_id),
               {", ".join(f"any_value(value) FILTER (WHERE signal = '{name}')" for name in SIGNAL_NAMES)}
        FROM quality_signals GROUP BY doc_id;
    DROP TABLE quality_signals;
    CREATE OR REPLACE VIEW quality_signals AS
        SELECT doc_id, signal, value, run_id FROM quality_signal_values
        UNPIVOT INCLUDE NULLS (value FOR signal IN (COLUMNS(* EXCLUDE (doc_id, run_id))));
    """,
    # 3: relevance ranked over the distinct densities of a language group, not over every document: the same
    # cume_dist (the share of the group's documents with terms at or below a density), a window over the distinct
    # values instead of a million documents; and one join of the scored documents with their density instead
    # of two (on a million documents each join of document ids costs a quarter of a second).
    """
    CREATE OR REPLACE VIEW quality_parts AS
        WITH scored AS (
            SELECT q.*, t.density
            FROM quality_scored q
            LEFT JOIN (SELECT doc_id, max(density) AS density FROM current_term_density GROUP BY doc_id) t
            USING (doc_id)),
        levels AS (
            SELECT language_group, density,
                   sum(count(*)) OVER (PARTITION BY language_group ORDER BY density)
                   / sum(count(*)) OVER (PARTITION BY language_group) AS relevance
            FROM scored WHERE density > 0 GROUP BY language_group, density),
        fluency AS (
            SELECT q.doc_id,
                   1.0 - percent_rank() OVER (PARTITION BY q.language_group ORDER BY p.perplexity) AS fluency
            FROM quality_scored q JOIN quality_perplexity_latest p USING (doc_id)
            WHERE p.perplexity IS NOT NULL)
        SELECT s.doc_id, s.language_group,
               CASE WHEN s.density <= 0 THEN 0.0 ELSE l.relevance END AS relevance,
               f.fluency, s.informativeness, s.safety
        FROM scored s LEFT JOIN levels l USING (language_group, density) LEFT JOIN fluency f USING (doc_id);
    """,
]

# Deduplication (core/dedup.py). Signatures and band hashes are keyed by scheme so a later run reuses them;
# pairs are stored down to a floor below the threshold so the review page can move the threshold without
# recomputing; clusters record which document each dropped one lost to.
DEDUP_MIGRATIONS: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS dedup_signatures (
        scheme VARCHAR NOT NULL,
        doc_id VARCHAR NOT NULL,
        shingles INTEGER,
        signature UINTEGER[] NOT NULL
    );
    CREATE TABLE IF NOT EXISTS dedup_bands (
        lsh_key VARCHAR NOT NULL,
        band SMALLINT NOT NULL,
        band_hash UBIGINT NOT NULL,
        doc_id VARCHAR NOT NULL
    );
    CREATE TABLE IF NOT EXISTS dedup_pairs (
        run_id VARCHAR NOT NULL,
        method VARCHAR NOT NULL,
        doc_a VARCHAR NOT NULL,
        doc_b VARCHAR NOT NULL,
        similarity DOUBLE NOT NULL
    );
    CREATE TABLE IF NOT EXISTS dedup_clusters (
        run_id VARCHAR NOT NULL,
        method VARCHAR NOT NULL,
        doc_id VARCHAR NOT NULL,
        kept_doc VARCHAR NOT NULL,
        cluster_size INTEGER NOT NULL,
        is_kept BOOLEAN NOT NULL,
        similarity_to_kept DOUBLE
    );
    """,
]

# Jobs (core/jobs.py): every long step launched as a process of its own (training, evaluation, curation). The
# launcher writes this table; the job's process writes only files in its output folder, and each look (list/get)
# reconciles the row with them, so a vanished process is marked failed instead of running forever.
JOBS_MIGRATIONS: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS jobs (
        job_id VARCHAR PRIMARY KEY,
        kind VARCHAR NOT NULL,
        label VARCHAR,
        config VARCHAR,
        argv JSON,
        status VARCHAR NOT NULL CHECK (status IN ('queued', 'running', 'stopping', 'stopped', 'finished', 'failed')),
        pid INTEGER,
        created_at TIMESTAMP DEFAULT current_timestamp,
        started_at TIMESTAMP,
        ended_at TIMESTAMP,
        exit_code INTEGER,
        output_dir VARCHAR,
        log_path VARCHAR,
        error VARCHAR,
        attempts INTEGER NOT NULL DEFAULT 1
    );
    """,
]

# Evaluation (core/evaluate/): lm-eval scores cached by model fingerprint, benchmark content hash and settings
# (cache_key); every item's per-choice log-likelihoods and exact prompt; perplexity per validation set.
EVAL_MIGRATIONS: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS eval_scores (
        cache_key VARCHAR PRIMARY KEY,
        model VARCHAR NOT NULL,
        model_path VARCHAR,
        adapter VARCHAR,
        model_fingerprint VARCHAR NOT NULL,
        benchmark VARCHAR NOT NULL,
        benchmark_hash VARCHAR NOT NULL,
        formulation VARCHAR NOT NULL CHECK (formulation IN ('letter', 'cloze')),
        shots INTEGER NOT NULL,
        settings JSON,
        items INTEGER,
        lm_eval JSON,
        run_id VARCHAR,
        created_at TIMESTAMP DEFAULT current_timestamp
    );
    CREATE TABLE IF NOT EXISTS eval_items (
        cache_key VARCHAR NOT NULL,
        position INTEGER NOT NULL,
        item_doc_id VARCHAR NOT NULL,
        item_id VARCHAR,
        benchmark VARCHAR,
        subject VARCHAR,
        formulation VARCHAR,
        loglikelihoods DOUBLE[],
        choice_chars INTEGER[],
        pred INTEGER,
        pred_norm INTEGER,
        gold INTEGER,
        context VARCHAR
    );
    CREATE TABLE IF NOT EXISTS eval_perplexity (
        cache_key VARCHAR PRIMARY KEY,
        model VARCHAR NOT NULL,
        model_fingerprint VARCHAR NOT NULL,
        validation_set VARCHAR NOT NULL,
        file VARCHAR,
        text_hash VARCHAR,
        settings JSON,
        documents INTEGER,
        tokens BIGINT,
        bytes BIGINT,
        words BIGINT,
        loglikelihood DOUBLE,
        token_perplexity DOUBLE,
        byte_perplexity DOUBLE,
        word_perplexity DOUBLE,
        bits_per_byte DOUBLE,
        doc_loglikelihoods DOUBLE[],
        doc_tokens INTEGER[],
        doc_bytes INTEGER[],
        run_id VARCHAR,
        created_at TIMESTAMP DEFAULT current_timestamp
    );
    """,
]

# Later steps register their own tables here under their component name (e.g. "dedup", "quality").
MIGRATIONS: dict[str, list[str]] = {
    "core": CORE_MIGRATIONS,
    "embed": EMBED_MIGRATIONS,
    "dedup": DEDUP_MIGRATIONS,
    "benchmarks": BENCHMARK_MIGRATIONS,
    "terms": TERMS_MIGRATIONS,
    "mix": MIX_MIGRATIONS,
    "quality": QUALITY_MIGRATIONS,
    "jobs": JOBS_MIGRATIONS,
    "eval": EVAL_MIGRATIONS,
}
