"""The mix builder on the real demo corpora: token shares, interleaving, the repeat cap, validation carve-out,
reproducibility, decontamination at export, the export formats and the CLI."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from core.decontam import contamination_index
from core.ingest import IngestConfig, ingest
from core.mix import (
    PRESETS,
    Component,
    MixRecipe,
    Phase,
    ValidationConfig,
    build_mix,
    instruction_row,
    latest_mix,
    load_recipe,
    plan_mix,
    preset_recipe,
    preview_mix,
    recipe_from_dict,
    recipe_to_dict,
    role_of,
    save_recipe,
)
from core.tokens import count_tokens
from core.workspace import Workspace, WorkspaceError
from studio import widgets
from studio.cli import main as cli_main

pytestmark = pytest.mark.slow  # one real token count of the demo corpora, then several exports


@pytest.fixture(scope="module")
def counted_ws_path(demo_ws_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ingested demo workspace with real token counts (bundled SmolLM2 tokenizer)."""
    path = tmp_path_factory.mktemp("mix") / "ws"
    shutil.copytree(demo_ws_path, path)
    with Workspace.open(path) as ws:
        count_tokens(ws)
    return path


@pytest.fixture
def ws(counted_ws_path: Path):
    with Workspace.open(counted_ws_path) as workspace:
        yield workspace


def members(result) -> list[dict]:
    return pq.read_table(Path(result.out_dir) / "members.parquet").to_pylist()


def train_members(result) -> list[dict]:
    return sorted((m for m in members(result) if m["split"] == "train"), key=lambda m: m["position"])


def jsonl_texts(path: Path) -> list[str]:
    with open(path, "rb") as fh:
        return [orjson.loads(line)["text"] for line in fh]


# --- recipes -------------------------------------------------------------------------------------------------
def test_recipe_toml_round_trip_and_presets(tmp_path: Path) -> None:
    recipe = MixRecipe(
        name="curriculum", seed=7, total_tokens=500_000, max_repeats=3,
        components=[Component("terminology", corpora=["medquad_nih"]), Component("domain", share=0.5),
                    Component("general", share=0.5, max_repeats=2)],
        phases=[Phase("basics", 0.4, {"terminology": 0.7, "general": 0.3}),
                Phase("clinical", 0.6, {"domain": 0.8, "general": 0.2})],
        validation=ValidationConfig(sets=["domain"], tokens=10_000), instruction_format="sharegpt",
        decontam={"n": 13, "mode": "cut"})
    path = save_recipe(recipe, tmp_path / "r.toml")
    assert "[[component]]" in path.read_text() or "component = [" in path.read_text()
    assert load_recipe(path) == recipe
    for name, shares in PRESETS.items():
        preset = preset_recipe(name, 1_000)
        assert {c.name: c.share for c in preset.components} == shares
        assert sum(shares.values()) == pytest.approx(1.0)
    assert recipe_from_dict(recipe_to_dict(recipe)) == recipe


@pytest.mark.parametrize("bad, message", [
    ({"components": []}, "no components"),
    ({"components": [{"name": "x", "share": 1}]}, "neither a role nor corpora"),
    ({"components": [{"name": "domain", "share": 1, "role": "benchmark"}]}, "never drawn"),
    ({"components": [{"name": "domain", "share": 1}], "on_short": "pray"}, "on_short"),
    ({"components": [{"name": "domain", "share": 1}], "phases": [{"name": "a", "fraction": 0.5,
                                                                  "shares": {"domain": 1}}]}, "add up to 1"),
    ({"components": [{"name": "domain", "share": 1}], "colour": "red"}, "unknown recipe keys"),
])
def test_bad_recipes_are_refused(bad: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        recipe_from_dict(bad)


def test_benchmark_corpora_and_missing_recall_are_refused(ws: Workspace) -> None:
    recipe = MixRecipe(components=[Component("leak", share=1, corpora=["mmlu_medical"])], decontaminate=False)
    with pytest.raises(WorkspaceError, match="benchmark corpus"):
        plan_mix(ws, recipe)
    recipe = MixRecipe(components=[Component("recalled", share=1, source="recalled")], decontaminate=False)
    with pytest.raises(WorkspaceError, match="recall has not run"):
        plan_mix(ws, recipe)


# --- shares, interleaving, repeats ---------------------------------------------------------------------------
@pytest.mark.parametrize("preset, budget", [("domain:general 70:30", 1_500_000), ("MIP 80/10/10", 2_000_000)])
def test_token_shares_within_one_percent(ws: Workspace, tmp_path: Path, preset: str, budget: int) -> None:
    recipe = preset_recipe(preset, budget, name="shares", seed=3, decontaminate=False)
    result = build_mix(ws, recipe, tmp_path / "out")
    rows = train_members(result)
    total = sum(r["tokens"] for r in rows)
    assert abs(total - budget) / budget < 0.01
    for name, share in PRESETS[preset].items():
        got = sum(r["tokens"] for r in rows if r["component"] == name) / total
        assert abs(got - share) < 0.01, (name, got, share)
        assert abs(result.components[name]["share_exported"] - share) < 0.01
    # The member token counts are the workspace's counts, and every member is a line of the export.
    sample = {r["doc_id"]: r["tokens"] for r in rows[:500]}
    stored = dict(ws.query("SELECT doc_id, token_count FROM documents WHERE doc_id IN (SELECT unnest(?))",
                           [list(sample)]))
    assert stored == sample
    assert len(jsonl_texts(Path(result.out_dir) / "train.jsonl")) == len(rows) == result.train_documents
    assert pq.read_table(Path(result.out_dir) / "train.parquet").num_rows == len(rows)
    assert latest_mix(ws, "shares")["mix_id"] == result.run_id
    stored_members = ws.scalar("SELECT count(*) FROM mix_members WHERE mix_id = ? AND split = 'train'",
                               [result.run_id])
    assert stored_members == len(rows)


def window_deviations(rows: list[dict], shares: dict[str, float], n: int) -> list[float]:
    out = []
    for start in range(0, len(rows) - n + 1, n):
        window = rows[start:start + n]
        total = sum(r["tokens"] for r in window)
        for name, share in shares.items():
            got = sum(r["tokens"] for r in window if r["component"] == name)
            out.append(abs(got / total - share))
    return out


def prefix_deviation(rows: list[dict], shares: dict[str, float]) -> float:
    """The largest gap, over every prefix of the sequence, between a component's tokens and its share."""
    cumulative, total, worst = dict.fromkeys(shares, 0), 0, 0.0
    for r in rows:
        cumulative[r["component"]] += r["tokens"]
        total += r["tokens"]
        worst = max(worst, max(abs(cumulative[c] - s * total) for c, s in shares.items()))
    return worst


def test_every_window_holds_the_component_shares(ws: Workspace, tmp_path: Path) -> None:
    recipe = preset_recipe("MIP 80/10/10", 2_000_000, name="windows", seed=5, decontaminate=False, window=200)
    result = build_mix(ws, recipe, tmp_path / "out")
    rows = train_members(result)
    totals = {c: sum(r["tokens"] for r in rows if r["component"] == c) for c in PRESETS["MIP 80/10/10"]}
    grand = sum(totals.values())
    shares = {c: t / grand for c, t in totals.items()}
    longest = {c: max(r["tokens"] for r in rows if r["component"] == c) for c in shares}
    n = recipe.window
    # Each component's documents sit at the middle of their token range in the component's stream, so over
    # any run of documents a component's tokens stray from its share by at most one of its own longest
    # documents plus its share of everyone's longest document.
    for start in range(0, len(rows) - n + 1, n // 4):
        window = rows[start:start + n]
        total = sum(r["tokens"] for r in window)
        for c, share in shares.items():
            got = sum(r["tokens"] for r in window if r["component"] == c)
            assert abs(got - share * total) <= longest[c] + share * sum(longest.values()) + 1, (start, c)
    # Against a plain seeded shuffle of the same documents, windows and prefixes are closer to the shares.
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    ours, baseline = window_deviations(rows, shares, n), window_deviations(shuffled, shares, n)
    assert sum(ours) < 0.85 * sum(baseline)
    assert prefix_deviation(rows, shares) < 0.6 * prefix_deviation(shuffled, shares)
    assert result.window["windows_checked"] == len(rows) // n
    # The manifest's window check measures the same thing against the recipe's shares.
    against_recipe = window_deviations(rows, PRESETS["MIP 80/10/10"], n)
    assert result.window["max_share_deviation"] == pytest.approx(max(against_recipe), abs=1e-3)

    # Interleaving by document count: every window of N documents holds each component's expected number
    # of documents, give or take one, so no stretch lacks a component.
    by_count = build_mix(ws, preset_recipe("MIP 80/10/10", 2_000_000, name="windows", seed=5,
                                           decontaminate=False, window=100, interleave="documents"),
                         tmp_path / "docs")
    rows = train_members(by_count)
    counts = {c: sum(1 for r in rows if r["component"] == c) for c in shares}
    for start in range(0, len(rows) - 100 + 1, 25):
        window = rows[start:start + 100]
        for c, count in counts.items():
            expected = 100 * count / len(rows)
            assert abs(sum(1 for r in window if r["component"] == c) - expected) <= 2, (start, c)
    assert by_count.window["windows_missing_a_component"] == 0
    assert {r["doc_id"] for r in rows} == {r["doc_id"] for r in train_members(result)}  # same draw, new order


def test_page_preview_is_the_plan_and_samples_from_the_pools(ws: Workspace) -> None:
    """The Mix page's one read: the same plan as `plan_mix` and, per component, a few seeded documents of the
    component's pool (no validation document was carved out before they were drawn: the pool as built)."""
    recipe = preset_recipe("MIP 80/10/10", 200_000, name="preview", seed=3, decontaminate=False)
    plan, samples = preview_mix(ws, recipe, 3)
    assert plan.to_dict() == plan_mix(ws, recipe).to_dict()
    assert list(samples) == [c.name for c in recipe.components]
    roles = dict(ws.query("SELECT name, role FROM corpora"))
    for comp in recipe.components:
        docs = samples[comp.name]
        assert len(docs) == 3 and len({d["doc_id"] for d in docs}) == 3
        for doc in docs:
            assert roles[doc["corpus"]] == role_of(comp) and doc["tokens"] > 0
            full = ws.scalar("SELECT text FROM documents WHERE doc_id = ?", [doc["doc_id"]])
            assert doc["text"] == full[:1200]
    assert preview_mix(ws, recipe, 3)[1] == samples  # seeded


def test_short_component_is_upsampled_only_up_to_the_cap(ws: Workspace, tmp_path: Path) -> None:
    # 1:5 of 3M tokens asks 2.5M general tokens; the demo has about 0.5M: 4 repeats cannot cover it.
    recipe = preset_recipe("domain:general 1:5", 3_000_000, name="capped", seed=1, decontaminate=False)
    plan = plan_mix(ws, recipe)
    general = next(c for c in plan.components if c.name == "general")
    assert general.short and plan.scale < 1
    assert any("short" in w for w in plan.warnings)
    result = build_mix(ws, recipe, tmp_path / "shrink")
    rows = train_members(result)
    copies: dict[str, int] = {}
    for r in rows:
        copies[r["doc_id"]] = copies.get(r["doc_id"], 0) + 1
        assert r["copy"] < 4
    assert max(copies.values()) == 4
    total = sum(r["tokens"] for r in rows)
    assert abs(sum(r["tokens"] for r in rows if r["component"] == "general") / total - 5 / 6) < 0.01
    assert result.components["general"]["short"] and result.components["general"]["max_copies"] == 4
    # Repeats of one document lie far apart: each copy is a separate shuffle of the whole pool.
    positions: dict[str, list[int]] = {}
    for r in rows:
        positions.setdefault(r["doc_id"], []).append(r["position"])
    gaps = [b - a for p in positions.values() for a, b in zip(sorted(p), sorted(p)[1:], strict=False)]
    assert sorted(gaps)[len(gaps) // 2] > len(rows) / 10

    allowed = preset_recipe("domain:general 1:5", 3_000_000, name="capped", seed=1, decontaminate=False,
                            on_short="allow", max_repeats=2)
    result = build_mix(ws, allowed, tmp_path / "allow")
    general = result.components["general"]
    assert general["max_copies"] == 2
    assert general["tokens"] == pytest.approx(2 * general["available_tokens"], rel=0.01)
    assert result.components["domain"]["tokens"] == pytest.approx(500_000, rel=0.01)

    with pytest.raises(WorkspaceError, match="short"):
        plan_mix(ws, preset_recipe("domain:general 1:5", 3_000_000, on_short="error"))


def test_curriculum_phases_come_in_order_with_their_shares(ws: Workspace, tmp_path: Path) -> None:
    recipe = MixRecipe(
        name="curriculum", seed=2, total_tokens=1_000_000, decontaminate=False,
        components=[Component("terminology", corpora=["medquad_nih"]),
                    Component("reasoning", corpora=["medical_consultations_zh_raw"]), Component("general")],
        phases=[Phase("basics", 0.5, {"terminology": 0.8, "general": 0.2}),
                Phase("clinical", 0.5, {"reasoning": 0.7, "general": 0.3})])
    result = build_mix(ws, recipe, tmp_path / "out")
    rows = train_members(result)
    phases = [r["phase"] for r in rows]
    assert phases == sorted(phases, key=["basics", "clinical"].index)
    for phase, shares in (("basics", {"terminology": 0.8, "general": 0.2}),
                          ("clinical", {"reasoning": 0.7, "general": 0.3})):
        part = [r for r in rows if r["phase"] == phase]
        total = sum(r["tokens"] for r in part)
        assert total == pytest.approx(500_000, rel=0.01)
        for c, share in shares.items():
            assert sum(r["tokens"] for r in part if r["component"] == c) / total == pytest.approx(share, abs=0.01)
    # General documents of the two phases are consecutive pieces of one stream: none is drawn twice.
    general = [r["doc_id"] for r in rows if r["component"] == "general"]
    assert len(general) == len(set(general))


# --- validation, reproducibility, decontamination ------------------------------------------------------------
def test_validation_sets_never_enter_training(ws: Workspace, tmp_path: Path) -> None:
    recipe = preset_recipe("domain:general 70:30", 1_000_000, name="heldout", seed=4, decontaminate=False,
                           validation=ValidationConfig(sets=["domain", "general"], tokens=30_000))
    result = build_mix(ws, recipe, tmp_path / "out")
    rows = members(result)
    train = {r["doc_id"] for r in rows if r["split"] == "train"}
    for split in ("validation_domain", "validation_general"):
        held = {r["doc_id"] for r in rows if r["split"] == split}
        assert held and not held & train
        assert result.validation[split]["tokens"] >= 30_000
        hashes = dict(ws.query("SELECT doc_id, content_hash FROM documents WHERE doc_id IN (SELECT unnest(?))",
                               [list(held | train)]))
        assert not {hashes[d] for d in held} & {hashes[d] for d in train}  # not even an exact copy
        texts = set(jsonl_texts(Path(result.out_dir) / f"{split}.jsonl"))
        assert not texts & set(jsonl_texts(Path(result.out_dir) / "train.jsonl"))
    roles = dict(ws.query("SELECT d.doc_id, c.role FROM documents d JOIN corpora c ON c.name = d.corpus "
                          "WHERE d.doc_id IN (SELECT unnest(?))",
                          [[r["doc_id"] for r in rows if r["split"] != "train"]]))
    assert {roles[r["doc_id"]] for r in rows if r["split"] == "validation_domain"} == {"domain"}
    info = json.loads((Path(result.out_dir) / "dataset_info.json").read_text())
    assert info["heldout_validation_domain"] == {"file_name": "validation_domain.jsonl",
                                                 "columns": {"prompt": "text"}}


def test_same_recipe_and_seed_give_a_byte_identical_export(ws: Workspace, tmp_path: Path) -> None:
    recipe = preset_recipe("MIP 80/10/10", 800_000, name="repro", seed=11, instruction_format="sharegpt")
    first = build_mix(ws, recipe, tmp_path / "a")
    second = build_mix(ws, recipe, tmp_path / "b")
    assert first.run_id != second.run_id
    names = sorted(p.name for p in Path(first.out_dir).iterdir())
    assert names == sorted(p.name for p in Path(second.out_dir).iterdir())
    for name in names:
        a, b = (Path(first.out_dir) / name).read_bytes(), (Path(second.out_dir) / name).read_bytes()
        if name == "manifest.json":
            ma, mb = json.loads(a), json.loads(b)
            assert ma.pop("run") != mb.pop("run")
            assert ma == mb
        else:
            assert hashlib.sha256(a).hexdigest() == hashlib.sha256(b).hexdigest(), name
    other = build_mix(ws, preset_recipe("MIP 80/10/10", 800_000, name="repro", seed=12,
                                        instruction_format="sharegpt"), tmp_path / "c")
    assert (Path(other.out_dir) / "train.jsonl").read_bytes() != (Path(first.out_dir) / "train.jsonl").read_bytes()
    manifest = json.loads(Path(first.manifest).read_text())
    for key, entry in manifest["files"].items():
        path = Path(first.out_dir) / entry["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], key
    assert manifest["document_ids"]["rows"] == len(members(first))


def test_no_benchmark_item_leaks_into_the_export(counted_ws_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "ws"
    shutil.copytree(counted_ws_path, path)
    with Workspace.open(path) as ws:
        index = contamination_index(ws)
        item_doc, question, answer = ws.query(
            "SELECT doc_id, question, answer FROM benchmark_items WHERE length(question) > 120 "
            "AND doc_id IN (SELECT doc_id FROM documents WHERE corpus = 'mmlu_medical') ORDER BY doc_id LIMIT 1")[0]
        item_text = ws.scalar("SELECT text FROM documents WHERE doc_id = ?", [item_doc])
        clean = ws.query("SELECT text FROM documents WHERE corpus = 'pubmed_abstracts' ORDER BY doc_id LIMIT 3")
        planted = [
            # a benchmark question and its answer inside ordinary domain prose
            {"text": f"{clean[0][0]}\n\nReview question: {question} Answer: {answer}\n\n{clean[1][0]}"},
            # the benchmark document itself, verbatim
            {"text": item_text},
            # a clean document, which must come through
            {"text": "Planted clean note: " + clean[2][0]},
        ]
        source = tmp_path / "planted.jsonl"
        source.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in planted), encoding="utf-8")
        ingest(ws, IngestConfig(sources=[str(source)], corpus="planted", role="domain"))
        recipe = MixRecipe(
            name="leak", seed=1, total_tokens=600_000,
            components=[Component("planted", share=0.01, corpora=["planted"], max_repeats=100),
                        Component("domain", share=0.69), Component("general", share=0.3)])
        result = build_mix(ws, recipe, tmp_path / "out")  # counts the planted documents' tokens itself
        out = Path(result.out_dir)
        texts = jsonl_texts(out / "train.jsonl")
        for split in result.validation:
            texts += jsonl_texts(out / f"{split}.jsonl")
        assert not any(hits for hits in index.find_many(texts))
        assert not any(question in t for t in texts)
        assert any(t.startswith("Planted clean note: ") for t in texts)
        assert result.components["planted"]["benchmark_copies_excluded"] == 1
        decontam = result.decontamination
        assert decontam["enabled"] and decontam["dropped_documents"] >= 1
        assert item_doc in {i["item"] for i in decontam["top_items"]} | {
            i for e in decontam["examples"] for i in e["items"]}
        assert decontam["item_matches_by_benchmark"].get("mmlu_medical", 0) >= 1
        planted_rows = [r for r in members(result) if r["corpus"] == "planted"]
        assert {r["decontam"] for r in planted_rows} == {None, "dropped"}
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["decontamination"]["dropped_documents"] == decontam["dropped_documents"]


# --- export formats and the CLI ------------------------------------------------------------------------------
def test_instruction_rows_in_both_formats() -> None:
    alpaca = {"instruction": "Explain", "input": "fever", "output": "A raised temperature.", "system": "Be brief",
              "history": [["hi", "hello"]]}
    assert instruction_row("alpaca", alpaca, "alpaca") == {**alpaca}
    assert instruction_row("alpaca", alpaca, "sharegpt") == {"system": "Be brief", "conversations": [
        {"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"},
        {"from": "human", "value": "Explain\nfever"}, {"from": "gpt", "value": "A raised temperature."}]}
    chat = {"conversations": [{"from": "system", "value": "sys"}, {"from": "user", "value": "q1"},
                              {"from": "assistant", "value": "a1"}, {"from": "human", "value": "q2"},
                              {"from": "gpt", "value": "a2"}]}
    assert instruction_row("sharegpt", chat, "alpaca") == {"instruction": "q2", "input": "", "output": "a2",
                                                           "system": "sys", "history": [["q1", "a1"]]}
    assert instruction_row("sharegpt", chat, "sharegpt")["conversations"][0] == {"from": "human", "value": "q1"}
    odd = {"conversations": [{"from": "human", "value": "q"}, {"from": "human", "value": "q again"}]}
    assert instruction_row("sharegpt", odd, "alpaca") is None


def test_cli_exports_with_json_and_plans(counted_ws_path: Path, tmp_path: Path, capsys) -> None:
    recipe_path = tmp_path / "recipe.toml"
    assert cli_main(["mix", str(counted_ws_path), "--recipe", str(recipe_path), "--write-preset",
                     "MIP 80/10/10", "--tokens", "400000"]) == 0
    capsys.readouterr()
    assert cli_main(["mix", str(counted_ws_path), "--recipe", str(recipe_path), "--plan", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    assert [c["name"] for c in plan["components"]] == ["domain", "instruction", "general"]
    out = tmp_path / "export"
    assert cli_main(["mix", str(counted_ws_path), "--recipe", str(recipe_path), "--out", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] and data["out_dir"] == str(out)
    assert {"train.jsonl", "train.parquet", "sft_alpaca.jsonl", "dataset_info.json", "manifest.json",
            "members.parquet", "recipe.toml"} <= {p.name for p in out.iterdir()}
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["mix_sft"]["formatting"] == "alpaca" and info["mix_train"]["columns"] == {"prompt": "text"}
    with open(out / "sft_alpaca.jsonl", "rb") as fh:
        first = orjson.loads(fh.readline())
    assert set(first) == {"instruction", "input", "output", "system", "history"}
    # A folder that is not an earlier export is never overwritten.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert cli_main(["mix", str(counted_ws_path), "--recipe", str(recipe_path), "--out", str(foreign)]) == 2
    assert (foreign / "notes.txt").read_text() == "mine"


# --- the page --------------------------------------------------------------------------------------------------
PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "mix.py")


def page_test(workspace: Path):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["workspace"] = str(workspace)
    return at


def test_page_accounting_follows_the_sliders_and_saves_recipes(counted_ws_path: Path) -> None:
    at = page_test(counted_ws_path)
    at.run()
    assert not at.exception
    assert [(s.label, s.value) for s in at.slider] == [("domain", 80.0), ("instruction", 10.0), ("general", 10.0)]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Requested tokens"] == "1,000,000" and metrics["Components short"] == "0"
    assert [widgets.token_figure(n) for n in (9_999_999, 12_345_678, 2_500_000_000)] == ["9,999,999", "12.3M",
                                                                                     "2.50B"]
    assert not at.warning
    # Ask for far more replay than the demo has: the page says the component is short and the budget shrinks.
    at.number_input(key="mix_total_0").set_value(6_000_000)
    at.slider(key="mix_share_general_0").set_value(60.0)
    at.run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Components short"] == "1"
    assert any("'general' is short" in w.value for w in at.warning)
    assert any("budget shrinks" in w.value for w in at.warning)
    at.text_input(key="mix_name_0").set_value("page-recipe")
    at.button[1].click()  # Save recipe
    at.run()
    saved = counted_ws_path / "artifacts" / "recipes" / "page-recipe.toml"
    recipe = load_recipe(saved)
    assert recipe.total_tokens == 6_000_000
    assert recipe.component("general").share == pytest.approx(0.6)
    # Reload it from the list of saved recipes: the widgets start from the file.
    at = page_test(counted_ws_path)
    at.run()
    at.selectbox(key="mix_start").set_value("saved: page-recipe")
    at.button[0].click()  # Load
    at.run()
    assert not at.exception
    assert at.slider(key="mix_share_general_1").value == 60.0
    assert at.number_input(key="mix_total_1").value == 6_000_000


@pytest.mark.browser
def test_page_exports_in_a_real_browser(counted_ws_path: Path, tmp_path: Path, app_server, browser_page) -> None:
    from browser_walk import VIEWPORT, cut_metric_values
    from conftest import open_studio_page, wait_for_app

    path = tmp_path / "ws"
    shutil.copytree(counted_ws_path, path)
    page = browser_page(app_server(path))
    open_studio_page(page, "", "Mix")
    page.get_by_text("Requested versus available tokens").wait_for(timeout=60_000)
    page.set_viewport_size(VIEWPORT)  # the plan's figures are read in full at 1400 px too
    wait_for_app(page)
    assert cut_metric_values(page) == [], cut_metric_values(page)
    page.get_by_text("Validation carve-out").scroll_into_view_if_needed()
    page.screenshot(path="/tmp/mix-page-plan.png")
    page.get_by_role("button", name="Export mix").click()
    page.get_by_text("finished").first.wait_for(timeout=240_000)
    wait_for_app(page)
    files = page.get_by_text("Files", exact=True)
    files.wait_for(timeout=60_000)
    files.scroll_into_view_if_needed()
    page.screenshot(path="/tmp/mix-page-exported.png")
    export = path / "artifacts" / "exports" / "mix"
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["decontamination"]["enabled"]
    assert page.get_by_role("button", name="Download").count() >= 5
    with Workspace.open(path, read_only=True) as ws:
        assert latest_mix(ws)["export_dir"] == str(export)
