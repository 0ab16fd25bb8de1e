"""The mix: what the model actually trains on, set in tokens, reproducible, exported in the formats trainers read.

A recipe names components (curated domain text, general text for replay, instruction data mixed into
pretraining, the recalled set or its random control), each drawn from chosen corpora of the current (filtered)
workspace, with shares in tokens of a total budget. `plan_mix` does the accounting (available versus requested
tokens per component, the repeats a short component needs) without writing anything, so the page can show it
live; `build_mix` samples, orders and exports.

How the mix is drawn, all in DuckDB SQL so a million documents never become Python lists:
1. Pools: each component's documents (current_documents, never a benchmark corpus, never an exact copy of a
   benchmark item); a document belongs to the first component that lists it.
2. Validation sets (domain and general text) are carved out of the pools first, by a seeded hash order, and
   every training document with the same content hash is removed too: held-out text never enters training.
3. Each component becomes a token stream: whole shuffled copies of its pool (a new shuffle per copy, so
   repeats lie far apart) plus a prefix of one more shuffled copy, until its token target is met. A component
   short of its target is up-sampled only up to `max_repeats` copies; beyond that the budget shrinks so the
   shares hold (`on_short = "shrink"`), the component stays short (`"allow"`) or the build stops (`"error"`).
4. Interleaving: a document's place in the mix is the middle of its token range within its component's
   stream, as a fraction of that stream. Sorting every component's documents by that fraction spreads each
   component evenly over the whole sequence: at every point each component's cumulative tokens are within
   about one of its longest documents of its share, so any window of N documents holds the components in
   their token shares as closely as document boundaries allow. (`interleave = "documents"` spaces documents
   by count instead: no window ever lacks a component, at the cost of token shares around very long
   documents.) Curriculum phases cut each stream into consecutive pieces, one per phase, with their own
   shares.
5. Export streams the ordered mix out of DuckDB in Arrow record batches, runs decontamination on every text,
   and writes JSONL and Parquet, the instruction records as alpaca or sharegpt, the validation sets, an entry
   for LLaMA-Factory's dataset_info.json, the membership and a manifest with file hashes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from core.config import read_json, write_json_atomic
from core.flow import scope_sql
from core.ingest import file_sha256
from core.mix_export import (
    EXPORT_MEMORY_LIMIT,
    EXPORT_TOLERANCE,
    MANIFEST_FORMAT,
    PARTIAL_MARKER,
    MixExportConfig,
    MixResult,
    build_mix,
    duckdb_memory_limit,
)
from core.mix_formats import (
    ASSISTANT_ROLES,
    HUMAN_ROLES,
    ExportedFile,
    dataset_info,
    instruction_row,
    instruction_turns,
)
from core.mix_plan import BATCH_ROWS, ComponentPlan, MixPlan, plan_mix, preview_mix
from core.mix_recipe import (
    DRAWABLE_ROLES,
    EXPORT_FORMATS,
    INSTRUCTION_FORMATS,
    INTERLEAVE,
    ON_SHORT,
    PRESETS,
    SOURCES,
    Component,
    MixRecipe,
    Phase,
    ValidationConfig,
    exports_folder,
    load_recipe,
    preset_recipe,
    recipe_from_dict,
    recipe_to_dict,
    recipe_toml,
    recipes_folder,
    role_of,
    save_recipe,
)
from core.mix_screening import MAX_SCREEN_ROUNDS, ContaminationChecker, Screening, contamination_checker
from core.progress import Progress, no_progress
from core.steps import Step, config_from_recipe, param, recipe_keys, validate_fields
from core.workspace import Workspace

# The public names of the mix, wherever they live: `from core.mix import X` is the one import path.
__all__ = [
    "ASSISTANT_ROLES", "BATCH_ROWS", "DRAWABLE_ROLES", "EXPORT_FORMATS", "EXPORT_MEMORY_LIMIT", "EXPORT_TOLERANCE",
    "HUMAN_ROLES", "INSTRUCTION_FORMATS", "INTERLEAVE", "MANIFEST_FORMAT", "MAX_SCREEN_ROUNDS", "MIX_COLUMNS",
    "ON_SHORT", "PARTIAL_MARKER", "PRESETS", "REGISTERED_STEP", "SOURCES", "Component", "ComponentPlan",
    "ContaminationChecker", "ExportedFile", "MixExportConfig", "MixPlan", "MixRecipe", "MixResult", "Phase", "PresetMixConfig",
    "Screening", "ValidationConfig", "build_mix", "contamination_checker", "dataset_info", "duckdb_memory_limit",
    "exports_folder", "instruction_row", "instruction_turns", "latest_mix", "load_recipe", "mixable_corpora",
    "plan_mix", "preview_mix", "preset_recipe", "recent_mixes", "recipe_from_dict", "recipe_to_dict", "recipe_toml",
    "recipes_folder", "role_of", "run_preset_mix", "save_recipe",
]


# --- finding mixes ---------------------------------------------------------------------------------------------
MIX_COLUMNS = ("mix_id", "name", "export_dir", "train_documents", "train_tokens", "seed", "ended_at")


def recent_mixes(ws: Workspace, name: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """Successful mixes (of `name`), newest first, `limit` at most."""
    sql = ("SELECT m.mix_id, m.name, m.export_dir, m.train_documents, m.train_tokens, m.seed, r.ended_at "
           "FROM mixes m JOIN runs r ON r.run_id = m.mix_id WHERE r.status = 'ok'"
           + (" AND m.name = ?" if name else "") + " ORDER BY r.ended_at DESC LIMIT ?")
    rows = ws.query(sql, ([name] if name else []) + [limit])
    return [dict(zip(MIX_COLUMNS, row, strict=True)) for row in rows]


def latest_mix(ws: Workspace, name: str | None = None) -> dict[str, Any] | None:
    """The newest successful mix (of `name`), as the report and training steps look it up."""
    mixes = recent_mixes(ws, name, limit=1)
    return mixes[0] if mixes else None


def mixable_corpora(ws: Workspace):  # -> pandas.DataFrame
    """Every corpus a mix may draw from (benchmarks never enter one): name, role and current documents."""
    scope, params = scope_sql(ws, None)
    return ws.df(f"SELECT c.name, c.role, count(d.doc_id) AS documents FROM corpora c "
                 f"LEFT JOIN ({scope}) d ON d.corpus = c.name WHERE c.role <> 'benchmark' "
                 f"GROUP BY ALL ORDER BY c.role, c.name", params)


@dataclass
class PresetMixConfig:
    """A mix from a preset, as a recipe asks for it; any other MixRecipe field (seed, ...) is an override."""

    preset: str = param("MIP 80/10/10", choices=tuple(PRESETS), help="the preset's shares of the roles")
    total_tokens: int = param(1_000_000, minimum=1, help="training tokens the mix holds")
    mix_name: str = param("demo-mix", help="the mix's name (`name` is the step's own key in a recipe)")
    # An eval-driven mix and its random control differ only here (core.mix_recipe.preset_recipe says how).
    domain_source: str = param("corpora", choices=SOURCES, group="preset recipe (--write-preset)",
                               help="where the domain share's text comes from: the domain corpora, the recall "
                                    "step's recalled set (an eval-driven mix) or its random control set (same size "
                                    "and length profile)")
    source_share: float = param(1.0, minimum=0.0, maximum=1.0, group="preset recipe (--write-preset)",
                                help="the part of the domain share drawn from --domain-source recalled or control; "
                                     "the rest comes from the domain corpora")
    validation: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict, metadata={"recipe": False})

    def recipe(self) -> MixRecipe:
        return preset_recipe(self.preset, self.total_tokens, name=self.mix_name, domain_source=self.domain_source,
                             source_share=self.source_share, validation=ValidationConfig(**self.validation),
                             **self.overrides)

    def validate(self) -> None:
        validate_fields(self)
        self.recipe()


# Beside the step's saved recipe (artifacts/recipes/NAME.inputs.json; the export folder holds only what its manifest
# lists): the fingerprint of what the export was built from (`mix_inputs_sha256`) and its mix id, so a re-run of the
# recipe on an unchanged workspace reuses the export (and its manifest hash, on which the training reuse rests).
INPUTS_SUFFIX = ".inputs.json"


def mix_inputs_sha256(ws: Workspace, recipe: MixRecipe) -> str:
    """A content fingerprint of everything a mix export is drawn from: the recipe, the tokenizer, the corpora and
    their roles, every current document (id, content hash, token count), the recall step's recalled and control
    sets, and the benchmark items decontamination screens against. Run ids are left out: a step re-run that
    changes nothing changes no fingerprint."""
    rows = ws.query(
        "SELECT (SELECT md5(coalesce(string_agg(name || ':' || role, ',' ORDER BY name), '')) FROM corpora), "
        "(SELECT md5(coalesce(string_agg(doc_id || ':' || content_hash || ':' || coalesce(token_count, -1), ',' "
        "ORDER BY doc_id), '')) FROM current_documents), "
        "(SELECT md5(coalesce(string_agg(doc_id, ',' ORDER BY doc_id), '')) FROM recalled_documents), "
        "(SELECT md5(coalesce(string_agg(doc_id, ',' ORDER BY doc_id), '')) FROM control_documents), "
        "(SELECT md5(coalesce(string_agg(d.content_hash, ',' ORDER BY d.content_hash), '')) FROM documents d "
        "JOIN corpora c ON c.name = d.corpus WHERE c.role = 'benchmark')")
    payload = {"recipe": recipe_to_dict(recipe), "tokenizer": ws.tokenizer_name, "data": list(rows[0])}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def reusable_mix(ws: Workspace, recipe: MixRecipe, inputs_sha256: str) -> MixResult | None:
    """The newest export of `recipe.name` when it was built from the same inputs and is intact (its manifest hash
    still the recorded one), as the MixResult its build returned; else None."""
    mix = latest_mix(ws, recipe.name)
    built = read_json(recipes_folder(ws) / f"{recipe.name}{INPUTS_SUFFIX}") or {}
    if not mix or not mix.get("export_dir") or built != {"inputs_sha256": inputs_sha256, "mix_id": mix["mix_id"]}:
        return None
    folder = Path(mix["export_dir"])
    manifest_path = folder / "manifest.json"
    recorded = ws.scalar("SELECT manifest_sha256 FROM mixes WHERE mix_id = ?", [mix["mix_id"]])
    if not manifest_path.is_file() or file_sha256(manifest_path) != recorded:
        return None
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    budget = manifest["budget"]
    plan = MixPlan(recipe=recipe, components=[], validation=manifest["validation"],
                   requested_tokens=budget["requested_tokens"], planned_tokens=budget["planned_tokens"],
                   scale=budget["scale"], phase_targets=manifest["phase_targets"], warnings=manifest["warnings"])
    files = {key: ExportedFile(str(folder / f["file"]), f["rows"], f["bytes"], f["sha256"])
             for key, f in manifest["files"].items()}
    files["manifest.json"] = ExportedFile(str(manifest_path), 1, manifest_path.stat().st_size, recorded)
    return MixResult(run_id=mix["mix_id"], name=recipe.name, out_dir=str(folder), plan=plan,
                     train_documents=budget["exported_documents"], train_tokens=budget["exported_tokens"],
                     components=manifest["components"], validation=manifest["validation"],
                     decontamination=manifest["decontamination"], window=manifest["window"], files=files,
                     manifest=str(manifest_path))


def run_preset_mix(ws: Workspace, cfg: PresetMixConfig, progress: Progress = no_progress) -> MixResult:
    """The mix step of a recipe: the preset's recipe saved among the workspace's recipes, then built, unless the
    newest export of that name was built from the same recipe and workspace content (then it is reused as is)."""
    recipe = cfg.recipe()
    save_recipe(recipe, recipes_folder(ws) / f"{recipe.name}.toml")
    inputs = mix_inputs_sha256(ws, recipe)
    if (reused := reusable_mix(ws, recipe, inputs)) is not None:
        progress(1.0, f"mix {recipe.name}: recipe and workspace unchanged, export {reused.out_dir} reused")
        return reused
    result = build_mix(ws, recipe, progress=progress)
    # taken again after the build: counting missing tokens on the way is part of what the export was drawn from
    write_json_atomic(recipes_folder(ws) / f"{recipe.name}{INPUTS_SUFFIX}",
                      {"inputs_sha256": mix_inputs_sha256(ws, recipe), "mix_id": result.run_id})
    return result


def _recipe_configs(table: dict[str, Any]) -> dict[None, PresetMixConfig]:
    own = set(recipe_keys(PresetMixConfig))
    overrides = {k: v for k, v in table.items() if k not in own and k != "name"}
    unknown = sorted(set(overrides) - {f.name for f in fields(MixRecipe)} - {"name", "components"})
    if unknown:
        raise ValueError(f"step mix: unknown keys {unknown}")
    config = config_from_recipe(PresetMixConfig, {k: v for k, v in table.items() if k in own}, step="mix")
    config.overrides = overrides
    return {None: config}


REGISTERED_STEP = Step("mix", PresetMixConfig, run_preset_mix, recipe_configs=_recipe_configs,
            summary=lambda r: {"run_id": r.run_id, "out_dir": r.out_dir, "train_documents": r.train_documents,
                               "train_tokens": r.train_tokens,
                               "decontam_dropped": r.decontamination["dropped_documents"],
                               "decontam_cut": r.decontamination["cut_documents"]})
