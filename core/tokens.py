"""Exact token counts with the workspace tokenizer, as their own cached pass.

Counting runs in the tokenizers library's Rust batch encoder (parallel over cores). It is kept off ingest's
critical path: ingest stays at tens of thousands of documents per second, and this pass fills
`documents.token_count` where it is missing. Identical texts are counted once (by raw text within a batch).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pyarrow as pa

from core.models import load_tokenizer
from core.progress import Progress, no_progress
from core.steps import Step, param, validate_fields
from core.workspace import Workspace


@dataclass
class TokenCountConfig:
    batch_size: int = param(2_000, minimum=1, help="documents tokenised per batch")
    recount: bool = param(False, help="count again even where a count exists (after changing the tokenizer)")

    def validate(self) -> None:
        validate_fields(self)


@dataclass
class TokenCountResult:
    run_id: str
    tokenizer: str
    documents_counted: int
    tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


def count_tokens(ws: Workspace, cfg: TokenCountConfig | None = None,
                 progress: Progress = no_progress) -> TokenCountResult:
    cfg = cfg or TokenCountConfig()
    name = ws.tokenizer_name
    if cfg.recount:
        ws.con.execute("UPDATE documents SET token_count = NULL")
    todo = ws.scalar("SELECT count(*) FROM documents WHERE token_count IS NULL")
    counted = total = 0
    with ws.run("tokens", {"tokenizer": name, "batch_size": cfg.batch_size}, supersede=False) as run:
        if todo:
            backend = load_tokenizer(name).backend_tokenizer
            cursor = ws.con.cursor()
            # A relation's reader streams the rows; one from execute() copies them first (and DuckDB warns).
            reader = cursor.sql(
                "SELECT doc_id, text FROM documents WHERE token_count IS NULL"
            ).to_arrow_reader(cfg.batch_size)
            for batch in reader:
                ids = batch.column(0).to_pylist()
                texts = batch.column(1).to_pylist()
                counts = [len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False)]
                ws.con.register("token_batch", pa.table({"doc_id": ids, "n": pa.array(counts, pa.int32())}))
                ws.con.execute("UPDATE documents SET token_count = t.n FROM token_batch t "
                               "WHERE documents.doc_id = t.doc_id")
                ws.con.unregister("token_batch")
                counted += len(ids)
                total += sum(counts)
                progress(counted / todo, f"{counted:,} / {todo:,} documents tokenised")
            cursor.close()
        run.counts = {"documents_counted": counted, "tokens": total}
    return TokenCountResult(run.run_id, name, counted, total)


REGISTERED_STEP = Step("tokens", TokenCountConfig, count_tokens, command="tokens",
            summary=lambda r: {"run_id": r.run_id, "documents_counted": r.documents_counted, "tokens": r.tokens})
