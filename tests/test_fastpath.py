"""Fast inference paths (core.fastpath): the choice honours the agreement bound, is cached per model and CPU
feature set, the vector cache key names the path, and the ONNX paths agree with fp32 on real paragraphs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core import embed, fastpath
from core.embed import EmbedConfig, embed_texts, encode_uncached, model_key
from core.fastpath import (
    ONNX_FP32,
    ONNX_FUSED_FP32,
    ONNX_FUSED_INT8_BLOCK,
    ONNX_FUSED_INT8_MIXED,
    ONNX_INT8,
    ONNX_INT8_BLOCK,
    ONNX_INT8_MIXED,
    ONNX_INT8_SMOOTH,
    TORCH_BF16,
    TORCH_FP32,
    PathChoice,
    PathTrial,
)
from core.workspace import Workspace

MEDQUAD = "medquad/corpus_en_medquad_nih_paragraphs.jsonl"
DIALOGUE_ZH = "chinese_medical_dialogue/corpus_zh_medical_dialogue_answers.jsonl"


def _paragraphs(data_dir: Path, name: str, n: int, skip: int = 0) -> list[str]:
    with open(data_dir / name, encoding="utf-8") as fh:
        return [json.loads(line)["text"] for _, line in zip(range(skip + n), fh, strict=False)][skip:]


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A choice file of its own (the ONNX exports stay in the shared cache: copying them would cost minutes)."""
    monkeypatch.setattr(fastpath, "_choices_path", lambda: tmp_path / fastpath.CHOICES_FILE)
    monkeypatch.delenv(embed.PATH_ENV, raising=False)
    return tmp_path


def test_choice_is_cached_per_model_and_cpu_feature_set(private_cache: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    trials = [PathTrial(TORCH_FP32, 10, 2.0, None, True), PathTrial(ONNX_INT8, 10, 0.5, 0.995, True)]
    choice = PathChoice("embed", "m|max_tokens=128|*|v2", fastpath.select_path(trials), "min cosine >= 0.99",
                        fastpath.cpu_feature_key(), trials)
    assert choice.path == ONNX_INT8 and choice.speedup() == pytest.approx(4.0)
    fastpath.store_choice(choice)
    again = fastpath.cached_choice("embed", "m|max_tokens=128|*|v2")
    assert again is not None and again.path == ONNX_INT8 and again.trials == trials
    assert fastpath.cached_choice("embed", "another model") is None
    assert fastpath.cached_choice("perplexity", "m|max_tokens=128|*|v2") is None

    # Another CPU feature set (here: AVX-512 VNNI present) decides again.
    model, flags, capability = fastpath._cpu_info()
    monkeypatch.setattr(fastpath, "_cpu_info", lambda: (model, (*flags, "avx512_vnni"), "AVX512"))
    assert fastpath.cpu_feature_key() != choice.cpu_key
    assert fastpath.cached_choice("embed", "m|max_tokens=128|*|v2") is None

    # Native bf16 is a candidate and part of the key; STUDIO_NO_BF16=1 makes the machine an AVX2-only one.
    monkeypatch.setattr(fastpath, "_bf16_hardware", lambda: True)
    assert TORCH_BF16 in fastpath.candidate_paths() and "-bf16-" in fastpath.cpu_feature_key()
    monkeypatch.setenv("STUDIO_NO_BF16", "1")
    assert TORCH_BF16 not in fastpath.candidate_paths() and "-nobf16-" in fastpath.cpu_feature_key()
    assert fastpath.cpu_features()["bf16_forced_off"] is True


def test_selection_keeps_the_fastest_accepted_path() -> None:
    trials = [PathTrial(TORCH_FP32, 10, 2.0, None, True), PathTrial(ONNX_INT8, 10, 0.4, 0.97, False),
              PathTrial(ONNX_INT8_MIXED, 10, 0.8, 0.992, True), PathTrial(ONNX_FP32, 10, 1.0, 0.99999, True),
              PathTrial(TORCH_BF16, 10, 0.0, None, False, "RuntimeError: no bf16")]
    assert fastpath.select_path(trials) == ONNX_INT8_MIXED
    assert fastpath.select_path(trials[:2]) == TORCH_FP32  # nothing else within the bound
    # Within SPEED_TIE of the fastest, the path closest to fp32 wins; beyond it, speed does.
    close = [PathTrial(TORCH_FP32, 10, 2.0, None, True), PathTrial(ONNX_INT8, 10, 0.400, 0.9903, True),
             PathTrial(ONNX_INT8_SMOOTH, 10, 0.408, 0.9973, True), PathTrial(ONNX_INT8_MIXED, 10, 0.6, 0.9990, True)]
    assert fastpath.select_path(close) == ONNX_INT8_SMOOTH
    assert fastpath.select_path([close[0], close[1], PathTrial(ONNX_INT8_SMOOTH, 10, 0.5, 0.9973, True)]) == ONNX_INT8
    deviations = [PathTrial(TORCH_FP32, 10, 2.0, None, True), PathTrial(ONNX_INT8, 10, 0.400, 0.019, True),
                  PathTrial(ONNX_INT8_BLOCK, 10, 0.404, 0.004, True)]
    assert fastpath.select_path(deviations, higher_agrees_more=False) == ONNX_INT8_BLOCK


def test_every_onnx_path_has_its_own_file_and_cache_key(tmp_path: Path) -> None:
    files = {fastpath.variant_file(tmp_path, p).name for p in fastpath.ONNX_PATHS}
    assert len(files) == len(fastpath.ONNX_PATHS)
    # The names of the files made before the new paths existed stay, so their caches stay valid.
    assert fastpath.variant_file(tmp_path, ONNX_FP32).name == "model.onnx"
    assert fastpath.variant_file(tmp_path, ONNX_INT8_MIXED).name == "model.int8-mixed.onnx"
    assert fastpath.onnx_variant_parts(ONNX_FUSED_INT8_BLOCK) == ("fused", "int8-block")
    with pytest.raises(ValueError, match="not an ONNX path"):
        fastpath.variant_file(tmp_path, TORCH_FP32)
    cfg = EmbedConfig()
    assert len({model_key(cfg, p) for p in fastpath.PATHS}) == len(fastpath.PATHS)
    assert fastpath.candidate_paths(onnx_paths=[ONNX_INT8_BLOCK])[:1] == [ONNX_INT8_BLOCK]
    with pytest.raises(ValueError, match="no fused graph"):
        fastpath.onnx_variant(tmp_path, ONNX_FUSED_FP32, lambda tmp: None, lambda src: [])


def test_blockwise_int8_keeps_matmuls_close_to_fp32(tmp_path: Path) -> None:
    """MatMulNBits (8-bit blocks, int8 compute) on a small graph with an outlier input channel: close to fp32,
    where per-tensor dynamic int8 is not; excluded and block-misaligned weights stay fp32 MatMuls."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1, w2, w3 = (rng.normal(0, 0.05, shape).astype(np.float32) for shape in ((128, 96), (96, 64), (64, 80)))
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"], name="first"),
             helper.make_node("MatMul", ["h1", "w2"], ["h2"], name="misaligned"),  # K=96: not a multiple of 64
             helper.make_node("MatMul", ["h2", "w3"], ["y"], name="kept")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 128])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 80])],
                              [numpy_helper.from_array(w, n) for w, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"))])
    source = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(source))
    x = rng.normal(0, 1, (32, 128)).astype(np.float32)
    x[:, 5] *= 60  # one outlier channel, as in real activations
    exact = x @ w1 @ w2 @ w3

    def run(path: Path) -> np.ndarray:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    target = fastpath.quantize_int8_blockwise(source, tmp_path / "q.onnx", exclude=["kept"], block_size=64)
    ops = [n.op_type for n in onnx.load(str(target)).graph.node]
    assert ops == ["MatMulNBits", "MatMul", "MatMul"]
    assert {t.name for t in onnx.load(str(target)).graph.initializer} == {"w1_q8", "w1_q8_scales", "w2", "w3"}
    blockwise = np.abs(run(target) - exact).max() / np.abs(exact).max()
    dynamic = np.abs(run(fastpath.quantize_int8(source, tmp_path / "d.onnx")) - exact).max() / np.abs(exact).max()
    # measured 0.021 vs 0.147 on an AVX2 CPU and 0.021 vs 0.031 on AVX-512 VNNI, whose int8 kernels do not saturate:
    # the blockwise error is the same everywhere, the per-tensor one depends on the CPU's kernels
    assert blockwise < 0.05 and blockwise < dynamic, (blockwise, dynamic)


def test_smoothing_keeps_the_function_and_flattens_the_activations(tmp_path: Path) -> None:
    """SmoothQuant on a small attention block: the smoothed graph computes the same outputs; the two MatMuls
    reading x share one Mul, the output projection's smoothing is folded into the value projection (no node);
    with an outlier channel in x, dynamic int8 of the smoothed graph is closer to fp32 than without smoothing."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    n, tokens, heads, dim = 4, 6, 2, 64
    weights = {name: rng.normal(0, 0.1, shape).astype(np.float32) for name, shape in
               (("wq", (dim, dim)), ("wv", (dim, dim)), ("bv", (dim,)), ("wo", (dim, dim)))}
    weights |= {"split": np.array([n, tokens, heads, dim // heads], np.int64), "join": np.array([n, tokens, dim],
                                                                                                  np.int64)}
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"], name="query"),
             helper.make_node("MatMul", ["x", "wv"], ["v0"], name="value"),
             helper.make_node("Add", ["bv", "v0"], ["v1"]),
             helper.make_node("Reshape", ["v1", "split"], ["v2"]),
             helper.make_node("Transpose", ["v2"], ["v3"], perm=[0, 2, 1, 3]),
             helper.make_node("MatMul", ["probs", "v3"], ["c0"]),
             helper.make_node("Transpose", ["c0"], ["c1"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["c1", "join"], ["c2"]),
             helper.make_node("MatMul", ["c2", "wo"], ["y"], name="output")]
    graph = helper.make_graph(
        nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, tokens, dim]),
                             helper.make_tensor_value_info("probs", TensorProto.FLOAT, [n, heads, tokens, tokens])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("q", "y")],
        [numpy_helper.from_array(v, k) for k, v in weights.items()])
    source = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(source))

    def inputs(seed: int) -> dict[str, np.ndarray]:
        r = np.random.default_rng(seed)
        x = r.normal(0, 1, (n, tokens, dim)).astype(np.float32)
        x[..., 7] *= 40  # an outlier channel, as after GELU or a LayerNorm with a large gain
        probs = r.random((n, heads, tokens, tokens)).astype(np.float32)
        return {"x": x, "probs": probs / probs.sum(-1, keepdims=True)}

    mask = np.ones((n, tokens), bool)
    maxima = fastpath.activation_maxima(source, [(inputs(s), mask) for s in (1, 2, 3)])
    assert set(maxima) == {"x", "c2"} and maxima["x"].argmax() == 7
    assert fastpath.smoothing_digest(maxima) == fastpath.smoothing_digest(dict(maxima))
    assert fastpath.smoothing_digest(maxima) != fastpath.smoothing_digest({**maxima, "x": maxima["x"] * 2})
    smoothed = fastpath.smooth_graph(source, tmp_path / "smooth.onnx", maxima)
    assert [node.op_type for node in onnx.load(str(smoothed)).graph.node].count("Mul") == 1

    def run(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["q", "y"], feed)

    feed = inputs(9)  # not among the calibration inputs
    exact = run(source, feed)
    for same, want in zip(run(smoothed, feed), exact, strict=True):
        np.testing.assert_allclose(same, want, rtol=1e-4, atol=1e-4)

    def error(path: Path) -> float:
        return max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(run(path, feed), exact, strict=True))

    plain = error(fastpath.quantize_int8(source, tmp_path / "int8.onnx"))
    smooth = error(fastpath.quantize_int8(smoothed, tmp_path / "smooth.int8.onnx"))
    assert smooth < plain, (smooth, plain)


@pytest.mark.slow
def test_smooth_path_is_made_once_and_named_in_the_cache_key(data_dir: Path, empty_ws: Workspace,
                                                            private_cache: Path) -> None:
    """onnx-int8-smooth for the bundled model: made from the statistics shipped with the studio (the same variant
    and cache key on every install), its vectors within the bound on held-out English and Chinese paragraphs,
    stored under a key that names the statistics' digest."""
    cfg = EmbedConfig()
    shipped = embed.SHIPPED_SMOOTHING[cfg.model]
    assert embed.onnx_file(cfg.model, ONNX_INT8_SMOOTH) is not None  # no texts needed: the shipped statistics
    digest = fastpath.smoothing_digest(embed.read_smoothing_maxima(shipped), embed.SMOOTHING_RECIPE)
    assert embed.smoothing_digest(cfg.model) == digest
    assert model_key(cfg, ONNX_INT8_SMOOTH).endswith(f"{ONNX_INT8_SMOOTH}@{digest}|{embed.EMBED_SCHEME}")
    held_out = _paragraphs(data_dir, MEDQUAD, 32) + _paragraphs(data_dir, DIALOGUE_ZH, 32)
    fast = embed_texts(empty_ws, held_out, cfg, path=ONNX_INT8_SMOOTH)
    reference = encode_uncached(held_out, cfg, path=TORCH_FP32)
    cosine = (fast * reference).sum(axis=1)
    print(f"onnx-int8-smooth: min cosine {cosine.min():.4f} on {len(held_out)} held-out paragraphs")
    assert cosine.min() >= embed.AGREEMENT_BOUND  # measured 0.9973 (MedQuAD), 0.9940 (Chinese)
    assert dict(empty_ws.query("SELECT model_key, count(*) FROM embeddings GROUP BY 1")) == {
        model_key(cfg, ONNX_INT8_SMOOTH): len(held_out)}


@pytest.mark.slow
def test_smooth_path_without_shipped_statistics_uses_calibration_text(data_dir: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A model whose shipped statistics do not fit its export (here: they name other tensors) is smoothed with its
    first calibration's texts: too few are refused with a clear error, enough make the variant once (not again
    at every call), and the record says where its statistics came from."""
    monkeypatch.setenv("STUDIO_CACHE", str(tmp_path / "cache"))  # an export of its own, made here
    cfg = EmbedConfig()
    unfitting = embed.write_smoothing_maxima({"not/an/activation": np.ones(4)}, tmp_path / "other.npz", 1)
    monkeypatch.setattr(embed, "SHIPPED_SMOOTHING", {cfg.model: unfitting})
    with pytest.raises(ValueError, match="16\\+ calibration texts; 1 given"):
        embed.onnx_file(cfg.model, ONNX_INT8_SMOOTH, ["one text"])
    texts = _paragraphs(data_dir, MEDQUAD, 24, skip=300)
    made = embed.onnx_file(cfg.model, ONNX_INT8_SMOOTH, texts)
    assert made is not None and made.exists()
    record = json.loads((made.parent / embed.SMOOTHING_FILE).read_text())
    assert record["statistics"] == "24 calibration texts" and record["digest"] == embed.smoothing_digest(cfg.model)
    assert embed.onnx_file(cfg.model, ONNX_INT8_SMOOTH, ["other"]) == made  # made once: no texts needed again


@pytest.mark.slow
def test_calibration_rejects_paths_below_the_bound(data_dir: Path, private_cache: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    texts = _paragraphs(data_dir, MEDQUAD, 24) + _paragraphs(data_dir, DIALOGUE_ZH, 12)
    cfg = EmbedConfig()
    choice = embed.calibrate(cfg, texts, paths=[ONNX_INT8, ONNX_INT8_MIXED, ONNX_FUSED_INT8_MIXED, ONNX_FP32])
    by_path = {t.path: t for t in choice.trials}
    assert set(by_path) == {TORCH_FP32, ONNX_INT8, ONNX_INT8_MIXED, ONNX_FUSED_INT8_MIXED, ONNX_FP32}
    for trial in choice.trials[1:]:
        assert trial.error is None and trial.accepted == (trial.agreement >= embed.AGREEMENT_BOUND)
    assert by_path[ONNX_FP32].agreement > 0.9999  # same arithmetic, another runtime
    chosen = by_path[choice.path]
    # The selection rule itself, on these real trials: accepted, within SPEED_TIE of the fastest accepted path
    # (CI once timed a closer path 1-5 % slower than the fastest: the tie rule chose it, as it should), and none
    # within that band closer to fp32.
    fastest = max(t.per_second for t in choice.trials if t.accepted)
    band = [t for t in choice.trials if t.accepted and t.per_second >= fastest * (1 - fastpath.SPEED_TIE)]
    assert choice.path == fastpath.select_path(choice.trials)
    assert chosen.accepted and chosen in band
    assert all(chosen.agreement is None or t.agreement <= chosen.agreement for t in band if t.agreement is not None)
    # The same real vectors against a bound no int8 path can meet: they must be rejected.
    monkeypatch.setattr(embed, "AGREEMENT_BOUND", 0.99999)
    strict = embed.calibrate(cfg, texts, paths=[ONNX_INT8, ONNX_INT8_MIXED, ONNX_FUSED_INT8_MIXED])
    assert not any(t.accepted for t in strict.trials if t.path != TORCH_FP32)
    assert strict.path == TORCH_FP32


@pytest.mark.slow
def test_cache_key_names_the_path(data_dir: Path, empty_ws: Workspace, private_cache: Path) -> None:
    texts = _paragraphs(data_dir, MEDQUAD, 6)
    cfg = EmbedConfig(batch_size=4)
    assert ONNX_INT8 in model_key(cfg, ONNX_INT8) and model_key(cfg, ONNX_INT8) != model_key(cfg, TORCH_FP32)
    reference = embed_texts(empty_ws, texts, cfg, path=TORCH_FP32)
    onnx = embed_texts(empty_ws, texts, cfg, path=ONNX_FP32)
    fused = embed_texts(empty_ws, texts, cfg, path=ONNX_FUSED_FP32)
    blockwise = embed_texts(empty_ws, texts, cfg, path=ONNX_FUSED_INT8_BLOCK)
    counts = dict(empty_ws.query("SELECT model_key, count(*) FROM embeddings GROUP BY 1"))
    assert counts == {model_key(cfg, p): 6 for p in (TORCH_FP32, ONNX_FP32, ONNX_FUSED_FP32, ONNX_FUSED_INT8_BLOCK)}
    assert (reference * onnx).sum(axis=1).min() > 0.9999
    assert (reference * fused).sum(axis=1).min() > 0.9999  # the fusions change the graph, not the arithmetic
    assert (reference * blockwise).sum(axis=1).min() > 0.999  # measured 0.9996+ (per-tensor int8: 0.97-0.99)


@pytest.mark.slow
def test_chosen_path_agrees_with_fp32_on_held_out_paragraphs(data_dir: Path, private_cache: Path) -> None:
    """Calibrate on one set of English and Chinese paragraphs, then check the chosen path on others."""
    cfg = EmbedConfig()
    calibration = _paragraphs(data_dir, MEDQUAD, 32) + _paragraphs(data_dir, DIALOGUE_ZH, 16)
    path = embed.choose_path(cfg, calibration)
    assert embed.cached_choice(cfg) is not None and embed.active_path(cfg) == path
    held_out = _paragraphs(data_dir, MEDQUAD, 32, skip=200) + _paragraphs(data_dir, DIALOGUE_ZH, 16, skip=200)
    fast = encode_uncached(held_out, cfg)
    plain = encode_uncached(held_out, cfg, fast=False)
    cosine = (fast * plain).sum(axis=1)
    print(f"path {path}: min cosine {cosine.min():.4f} on {len(held_out)} held-out paragraphs")
    assert cosine.min() >= embed.AGREEMENT_BOUND - 0.002, f"{path} drifted: min cosine {cosine.min():.4f}"
    np.testing.assert_allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-4)


@pytest.mark.slow
def test_onnx_perplexity_agrees_with_fp32(data_dir: Path, private_cache: Path) -> None:
    from core.perplexity import PerplexityConfig, relative_deviation, score_texts

    texts = [t for t in _paragraphs(data_dir, MEDQUAD, 60) if len(t.split()) >= 40][:6]
    reference = [p for p, _ in score_texts(texts, PerplexityConfig(max_tokens=64, dtype=TORCH_FP32))]
    onnx = [p for p, _ in score_texts(texts, PerplexityConfig(max_tokens=64, dtype=ONNX_FP32))]
    assert relative_deviation(reference, onnx) < 1e-3
    assert relative_deviation(reference, [p * 1.03 for p in reference]) == pytest.approx(0.03)
