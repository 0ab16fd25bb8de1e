"""Picking, on the machine at hand, the fastest inference path that still agrees with fp32.

bf16 autocast is fast only where the CPU computes bf16 natively (AVX-512 BF16 / AMX); on AVX2-only CPUs (most
laptops, many AMD servers) it is emulated and slower than fp32. ONNX Runtime, in fp32 and with dynamic int8
quantisation of the matrix multiplications, is fast on every x86 CPU, but int8 can move the results too far.
So each model task (embeddings, perplexity) lists its candidate paths, times them on a small calibration sample
at first use, measures their agreement with the fp32 reference (a worst case over the sample, not a mean), and
keeps the fastest one within the bound (paths within `SPEED_TIE` of the fastest count as equally fast, and the
closest to fp32 among them is kept). The choice is cached in a small JSON file under `STUDIO_CACHE`, keyed by
task, model and CPU feature set, so another CPU (or `STUDIO_NO_BF16=1`) decides again.

Path names: `torch-fp32` (the reference), `torch-bf16` (autocast, only where native), `onnx-fp32`, `onnx-int8`
(every weight MatMul int8, per channel), `onnx-int8-mixed` (int8 except the layers measured to be sensitive),
`onnx-int8-block` (every weight MatMul as `MatMulNBits`: 8-bit weights in blocks of 32, int8 compute with the
activations quantised per row and block, far closer to fp32 than per-tensor dynamic int8), and the same on the
graph fused by ONNX Runtime's offline transformer optimizer (`onnx-fused-fp32`, `onnx-fused-int8-mixed`,
`onnx-fused-int8-block`: fused Attention, SkipLayerNormalization, BiasGelu, which the session-time optimizer does
not do; the fused Attention's QKV weights are quantised as one `QAttention`), where a task has such a fusion;
and `onnx-int8-smooth`: SmoothQuant (Xiao et al. 2023, arXiv:2211.10438) before dynamic int8. A few activation
channels with large values coarsen per-tensor int8 for every other channel; smoothing divides each input channel
of a weight MatMul by `s_j = max|x_j|^a / max|W_j|^(1-a)` (maxima from calibration text) and multiplies the
weight's row j by it: the same product, with the range moved into the weights, which are quantised per channel.
The division is folded into the value projection where the activation is an attention context (free), and is a
Mul elsewhere (one per activation, shared by the MatMuls reading it, so Q, K and V keep one quantisation); the
MatMuls a task names stay more precise as `MatMulNBits` (8-bit blocks, activations quantised per block).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from core.models import cache_dir

TORCH_FP32 = "torch-fp32"
TORCH_BF16 = "torch-bf16"
ONNX_FP32 = "onnx-fp32"
ONNX_INT8 = "onnx-int8"
ONNX_INT8_MIXED = "onnx-int8-mixed"
ONNX_INT8_BLOCK = "onnx-int8-block"
ONNX_FUSED_FP32 = "onnx-fused-fp32"
ONNX_FUSED_INT8_MIXED = "onnx-fused-int8-mixed"
ONNX_FUSED_INT8_BLOCK = "onnx-fused-int8-block"
ONNX_INT8_SMOOTH = "onnx-int8-smooth"
ONNX_PATHS = (ONNX_INT8_SMOOTH, ONNX_FUSED_INT8_MIXED, ONNX_FUSED_INT8_BLOCK, ONNX_INT8, ONNX_INT8_MIXED,
              ONNX_INT8_BLOCK, ONNX_FUSED_FP32, ONNX_FP32)
SMOOTH_ALPHA = 0.7  # SmoothQuant's migration strength: 0.5-1.0 measured on all-MiniLM-L6-v2, 0.7 the best
SMOOTH_BLOCK_SIZE = 128  # MatMulNBits block for the MatMuls kept finer: as accurate as 32 there, and faster
PATHS = (*ONNX_PATHS, TORCH_BF16, TORCH_FP32)
# The CPU flags that change which path is fastest or even available.
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
                  "amx_int8", "amx_tile", "asimd", "sve", "bf16", "i8mm")
CHOICES_FILE = "fastpath_choices.json"
# Part of every choice's key: bumped when the candidate paths change, so a choice made among fewer paths is made
# again (once) rather than kept forever.
CHOICE_SCHEME = "paths-v3"

_choice_lock = threading.Lock()


def bf16_forced_off() -> bool:
    """`STUDIO_NO_BF16=1` (or the older `STUDIO_EMBED_FP32=1`) makes the studio behave as on an AVX2-only CPU."""
    return os.environ.get("STUDIO_NO_BF16") == "1" or os.environ.get("STUDIO_EMBED_FP32") == "1"


def bf16_is_native() -> bool:
    """True where oneDNN runs bf16 matmuls in hardware; elsewhere bf16 is emulated and slower than fp32."""
    return not bf16_forced_off() and _bf16_hardware()


@cache
def _bf16_hardware() -> bool:
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@cache
def _cpu_info() -> tuple[str, tuple[str, ...], str]:
    """(model name, relevant flags present, torch's CPU capability) of this machine."""
    import torch

    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model == "unknown":
                    model = value.strip()
                elif key in ("flags", "Features"):
                    flags |= set(value.split())
    except OSError:
        pass
    try:
        capability = str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        capability = "unknown"
    return model, tuple(f for f in RELEVANT_FLAGS if f in flags), capability


def cpu_features() -> dict[str, Any]:
    """What the choice of path depends on, as recorded with every choice (and shown in the bench output)."""
    model, flags, capability = _cpu_info()
    return {"cpu": model, "capability": capability, "flags": list(flags), "cores": os.cpu_count(),
            "bf16_hardware": _bf16_hardware(), "bf16_forced_off": bf16_forced_off(),
            "bf16_native": bf16_is_native()}


def cpu_feature_key() -> str:
    """A short key for this CPU feature set: choices made on another feature set are never reused."""
    f = cpu_features()
    digest = hashlib.sha1(",".join(f["flags"]).encode()).hexdigest()[:8]
    return f"{f['capability']}-{'bf16' if f['bf16_native'] else 'nobf16'}-{digest}"


def candidate_paths(onnx_available: bool = True, onnx_paths: Sequence[str] = ONNX_PATHS) -> list[str]:
    """The paths worth trying here (`onnx_paths`: those a task has): bf16 only where native (emulated bf16 is
    slower than fp32)."""
    out = list(onnx_paths) if onnx_available else []
    if bf16_is_native():
        out.append(TORCH_BF16)
    return out + [TORCH_FP32]


@dataclass
class PathTrial:
    path: str
    items: int
    seconds: float
    agreement: float | None  # the worst case over the calibration sample (cosine, or relative deviation)
    accepted: bool
    error: str | None = None

    @property
    def per_second(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0


@dataclass
class PathChoice:
    task: str  # "embed" | "perplexity"
    model: str
    path: str
    bound: str  # the agreement rule, in words
    cpu_key: str
    trials: list[PathTrial] = field(default_factory=list)
    decided_at: str = ""

    def trial(self, path: str) -> PathTrial | None:
        return next((t for t in self.trials if t.path == path), None)

    def speedup(self) -> float | None:
        """How much faster the chosen path ran than the fp32 reference during calibration."""
        chosen, ref = self.trial(self.path), self.trial(TORCH_FP32)
        if not chosen or not ref or not chosen.seconds:
            return None
        return ref.seconds / chosen.seconds * (chosen.items / max(ref.items, 1))

    def describe(self) -> str:
        chosen = self.trial(self.path)
        parts = [self.path]
        if chosen and chosen.agreement is not None and self.path != TORCH_FP32:
            parts.append(f"agreement {chosen.agreement:.4f} ({self.bound})")
        speed = self.speedup()
        if speed and self.path != TORCH_FP32:
            parts.append(f"{speed:.1f}x torch fp32 at calibration")
        return ", ".join(parts) + f"; chosen on {self.cpu_key}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PathChoice:
        trials = [PathTrial(**t) for t in data.get("trials", [])]
        return cls(**{**data, "trials": trials})


# Accepted paths within this share of the fastest one's speed count as equally fast (timings on a shared 2-core
# machine move by about that much between runs): of those, the one closest to fp32 is chosen, so a path just
# inside the bound does not win over one far inside it by a difference the clock cannot tell.
SPEED_TIE = 0.05


def select_path(trials: Sequence[PathTrial], higher_agrees_more: bool = True) -> str:
    """The fastest accepted trial's path, the one closest to fp32 among those within SPEED_TIE of it (agreement:
    higher is closer, as cosine, or with `higher_agrees_more=False` lower is, as a deviation); the fp32
    reference when nothing else was accepted."""
    accepted = [t for t in trials if t.accepted and t.error is None and t.seconds > 0]
    if not accepted:
        return TORCH_FP32
    fastest = max(t.per_second for t in accepted)
    ties = [t for t in accepted if t.per_second >= fastest * (1 - SPEED_TIE)]

    def closeness(t: PathTrial) -> float:
        if t.agreement is None:  # the reference itself
            return float("inf")
        return t.agreement if higher_agrees_more else -t.agreement

    return max(ties, key=lambda t: (closeness(t), t.per_second)).path


def run_trials(paths: Sequence[str], items: int, compute: Callable[[str, bool], Any],
               agreement: Callable[[Any, Any], float], accept: Callable[[float], bool],
               progress: Callable[[str], None] = lambda message: None) -> list[PathTrial]:
    """Time `compute(path, False)` for every path (the fp32 reference first; each after a warm-up call
    `compute(path, True)` on a few items) and measure each result's agreement with the reference's. A path
    that fails is recorded with its error, never chosen."""
    ordered = [TORCH_FP32] + [p for p in paths if p != TORCH_FP32]
    reference: Any = None
    trials = []
    for path in ordered:
        progress(f"calibrating {path}")
        try:
            compute(path, True)  # warm-up: first-call costs (session creation, allocation) are not steady state
            start = time.perf_counter()
            result = compute(path, False)
            seconds = time.perf_counter() - start
        except Exception as exc:  # noqa: BLE001 - a path that cannot run here is simply not a candidate
            if path == TORCH_FP32:
                raise
            trials.append(PathTrial(path, items, 0.0, None, False, f"{type(exc).__name__}: {exc}"[:300]))
            continue
        if path == TORCH_FP32:
            reference = result
            trials.append(PathTrial(path, items, seconds, None, True))
            continue
        score = float(agreement(reference, result))
        trials.append(PathTrial(path, items, seconds, score, bool(accept(score))))
    return trials


def calibration_sample(texts: Sequence[str], size: int) -> list[str]:
    """Up to `size` distinct texts spread evenly over the length range (short and long both count)."""
    distinct = sorted(set(texts), key=lambda t: (len(t), t))
    if len(distinct) <= size:
        return distinct
    step = len(distinct) / size
    return [distinct[int(i * step)] for i in range(size)]


def decide(env: str, task: str, model: str, texts: Sequence[str], min_texts: int,
           calibrate: Callable[[], PathChoice]) -> str:
    """The path to use: named in `env`, else the cached choice for (task, model, this CPU feature set), else
    `calibrate()` (stored) where `texts` hold at least `min_texts` distinct texts; else the fp32 reference,
    not stored, so a later, larger call decides."""
    forced = forced_path(env)
    if forced:
        return forced
    known = cached_choice(task, model)
    if known:
        return known.path
    if len(set(texts)) < min_texts:
        return TORCH_FP32
    choice = calibrate()
    store_choice(choice)
    return choice.path


def _choices_path() -> Path:
    return cache_dir() / CHOICES_FILE


def choice_key(task: str, model: str) -> str:
    return f"{task}|{model}|{cpu_feature_key()}|{CHOICE_SCHEME}"


def _read_choices() -> dict[str, Any]:
    try:
        return json.loads(_choices_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def cached_choice(task: str, model: str) -> PathChoice | None:
    data = _read_choices().get(choice_key(task, model))
    if not data:
        return None
    try:
        return PathChoice.from_dict(data)
    except TypeError:  # written by another version of this module: decide again
        return None


def store_choice(choice: PathChoice) -> None:
    choice.decided_at = choice.decided_at or datetime.now(UTC).isoformat(timespec="seconds")
    with _choice_lock:
        data = _read_choices()
        data[choice_key(choice.task, choice.model)] = choice.to_dict()
        target = _choices_path()
        tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        tmp.replace(target)  # atomic: a concurrent reader sees the old or the new file, never half of one


def forced_path(env: str) -> str | None:
    """A path named in an environment variable (benches, tests, a user overriding the calibration)."""
    value = os.environ.get(env, "").strip()
    if not value:
        return None
    if value not in PATHS:
        raise ValueError(f"{env}={value!r}: the paths are {', '.join(PATHS)}")
    return value


# --- ONNX export and quantisation -------------------------------------------------------------------------------
def onnx_dir(name: str, source: Path) -> Path:
    """Where the exports of a local model folder live: named by the model and a hash of its weights' size and
    time, so a changed model is exported again."""
    stamp = "|".join(f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}"
                     for p in sorted(source.glob("*.safetensors")) + sorted(source.glob("*.bin")))
    digest = hashlib.sha1(f"{source}|{stamp}".encode()).hexdigest()[:10]
    return cache_dir() / "onnx" / f"{name}-{digest}"


def atomic_onnx(target: Path, write: Callable[[Path], None]) -> Path:
    """Write an ONNX file through a temporary name, so a concurrent process never loads half a file."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.stem}.tmp{os.getpid()}{target.suffix}")
    write(tmp)
    tmp.replace(target)
    return target


_variant_lock = threading.Lock()


def variant_file(folder: Path, path: str) -> Path:
    """The file of an ONNX path: `model[.fused][.<quantisation>].onnx` (model.onnx is the plain fp32 export)."""
    graph, quant = onnx_variant_parts(path)
    return folder / f"model{'.fused' if graph == 'fused' else ''}{'' if quant == 'fp32' else '.' + quant}.onnx"


def intermediate_files(folder: Path, path: str) -> tuple[Path, ...]:
    """The graphs made on the way to an ONNX path's file and for it alone (`onnx-int8-smooth`: the smoothed fp32
    graph, then its finer MatMuls as MatMulNBits). `onnx_variant` reuses them where they exist, so they go with the
    variant (`remove_variant`)."""
    if onnx_variant_parts(path)[1] != "int8-smooth":
        return ()
    return folder / "model.smooth.onnx", folder / "model.smooth.block.onnx"


def remove_variant(folder: Path, path: str) -> None:
    """Remove an ONNX path's file and its intermediate graphs, so the next `onnx_variant` makes it from scratch."""
    for file in (variant_file(folder, path), *intermediate_files(folder, path)):
        file.unlink(missing_ok=True)


def onnx_variant_parts(path: str) -> tuple[str, str]:
    """('plain' | 'fused', 'fp32' | 'int8' | 'int8-mixed' | 'int8-block' | 'int8-smooth') of an ONNX path name."""
    if path not in ONNX_PATHS:
        raise ValueError(f"{path} is not an ONNX path ({', '.join(ONNX_PATHS)})")
    rest = path.removeprefix("onnx-")
    return ("fused", rest.removeprefix("fused-")) if rest.startswith("fused-") else ("plain", rest)


def onnx_variant(folder: Path, path: str, export: Callable[[Path], None],
                 sensitive: Callable[[Path], Sequence[str]],
                 fuse: Callable[[Path, Path], None] | None = None,
                 block_sensitive: Callable[[Path], Sequence[str]] = lambda source: (),
                 smooth_maxima: Callable[[Path], dict[str, Any]] | None = None,
                 smooth_block: Callable[[Path], Sequence[str]] = lambda source: ()) -> Path:
    """The ONNX file of one path in `folder`, made on first need: `model.onnx` through `export`; the fused graph
    through `fuse(source, target)` (a task without one has no fused paths); the int8 variants quantised from the
    plain or fused fp32 graph (`onnx-int8-mixed` leaves the nodes `sensitive` names in fp32, `*-int8-block` those
    `block_sensitive` names; `onnx-int8-smooth` smooths with the activation maxima `smooth_maxima(source)` gives
    (see `activation_maxima`; a task without them has no smooth path) and keeps the `smooth_block` nodes as
    MatMulNBits)."""
    target = variant_file(folder, path)
    if target.exists():
        return target
    graph, quant = onnx_variant_parts(path)
    if graph == "fused" and fuse is None:
        raise ValueError(f"{path}: this model has no fused graph")
    if quant == "int8-smooth" and smooth_maxima is None:
        raise ValueError(f"{path}: this model has no smoothing statistics")
    with _variant_lock:
        source = atomic_onnx(folder / "model.onnx", export)
        if graph == "fused":
            fused = folder / "model.fused.onnx"
            source = atomic_onnx(fused, lambda tmp: fuse(folder / "model.onnx", tmp))  # type: ignore[misc]
        if quant == "int8":
            quantize_int8(source, target)
        elif quant == "int8-mixed":
            quantize_int8(source, target, sensitive(source))
        elif quant == "int8-block":
            quantize_int8_blockwise(source, target, block_sensitive(source))
        elif quant == "int8-smooth":
            smoothed_file, blocked_file = intermediate_files(folder, path)
            smoothed = atomic_onnx(smoothed_file,
                                   lambda tmp: smooth_graph(source, tmp, smooth_maxima(source)))  # type: ignore[misc]
            finer = set(smooth_block(smoothed))
            blocked = quantize_int8_blockwise(smoothed, blocked_file,
                                              [n for n in weight_matmuls(smoothed) if n not in finer],
                                              block_size=SMOOTH_BLOCK_SIZE)
            quantize_int8(blocked, target)  # the MatMulNBits nodes are no longer MatMuls: left as they are
    return target


def quantize_int8(source: Path, target: Path, exclude: Sequence[str] = ()) -> Path:
    """Dynamic int8 quantisation of the weight MatMuls and fused Attentions (per output channel, activations
    quantised per tensor at run time). reduce_range stays off: it was measured less accurate here and ORT's AVX2
    kernels do not need it."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    skip = set(exclude)
    nodes = [n for n in weight_matmuls(source) if n not in skip]

    def write(tmp: Path) -> None:
        quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Attention"], nodes_to_quantize=nodes,
                         # a fused graph's contrib ops defeat shape inference: their outputs are float
                         extra_options={"DefaultTensorType": TensorProto.FLOAT})

    return atomic_onnx(target, write)


def weight_matmuls(model_path: Path) -> list[str]:
    """Names of the MatMul (and fused Attention) nodes whose second input is a stored weight matrix, in graph
    order: the ones worth quantising. Small or non-2-D constants are left out: a rotary embedding's `inv_freq @ positions` is a
    MatMul with a constant too, and int8 there wrecks every position (perplexity off by orders of magnitude)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    matrices = {t.name for t in model.graph.initializer if len(t.dims) == 2 and min(t.dims) >= 64}
    return [n.name for n in model.graph.node
            if n.op_type in ("MatMul", "Attention") and len(n.input) > 1 and n.input[1] in matrices]


@cache
def onnx_session(path: str, threads: int = 0):  # -> onnxruntime.InferenceSession
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def quantize_int8_blockwise(source: Path, target: Path, exclude: Sequence[str] = (), block_size: int = 32,
                            bits: int = 8) -> Path:
    """Weight MatMuls as ONNX Runtime's `MatMulNBits` with 8-bit symmetric weights in blocks of `block_size`
    along K and `accuracy_level=4` (int8 compute: the activations are quantised per row and block at run time,
    not per tensor as in `quantize_int8`, so one outlier channel no longer coarsens a whole batch)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    def write(tmp: Path) -> None:
        model = onnx.load(str(source))
        graph = model.graph
        weights = {t.name: t for t in graph.initializer}
        chosen = set(weight_matmuls(source)) - set(exclude)
        users: dict[str, int] = {}
        for node in graph.node:
            for name in node.input:
                users[name] = users.get(name, 0) + 1
        nodes = []
        for node in graph.node:
            weight = weights.get(node.input[1]) if node.op_type == "MatMul" and node.name in chosen else None
            k, n = (tuple(weight.dims) + (0, 0))[:2] if weight is not None else (0, 0)
            if weight is None or k % block_size:
                nodes.append(node)
                continue
            matrix = np.ascontiguousarray(numpy_helper.to_array(weight), dtype=np.float32)
            blocks = k // block_size
            packed = np.zeros((n, blocks, block_size * bits // 8), dtype=np.uint8)
            scales = np.zeros((n, blocks), dtype=np.float32)
            zero_points = np.zeros((n, (blocks * bits + 7) // 8), dtype=np.uint8)
            quantize = quantize_matmul_8bits if bits == 8 else quantize_matmul_4bits
            quantize(packed, matrix, scales, zero_points, block_size, n, k, True)
            graph.initializer.extend([numpy_helper.from_array(packed, f"{weight.name}_q8"),
                                      numpy_helper.from_array(scales, f"{weight.name}_q8_scales")])
            nodes.append(onnx.helper.make_node(
                "MatMulNBits", [node.input[0], f"{weight.name}_q8", f"{weight.name}_q8_scales"], list(node.output),
                name=f"{node.name}_q8", domain="com.microsoft", K=k, N=n, bits=bits, block_size=block_size,
                accuracy_level=4))
            users[weight.name] -= 1
        graph.ClearField("node")
        graph.node.extend(nodes)
        unused = [t for t in graph.initializer if users.get(t.name, 1) == 0]
        for tensor in unused:
            graph.initializer.remove(tensor)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
        onnx.save(model, str(tmp))

    return atomic_onnx(target, write)


# --- SmoothQuant ------------------------------------------------------------------------------------------------
def activation_maxima(source: Path, feeds: Iterable[tuple[dict[str, Any], Any]]) -> dict[str, Any]:
    """max |x_j| per input channel of every weight MatMul's activation (by tensor name), over the real tokens of
    `feeds`: (session inputs, boolean token mask of shape batch x tokens) pairs."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(source))
    activations = matmul_activations(source)
    for name in activations:
        graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    maxima: dict[str, Any] = {}
    for inputs, mask in feeds:
        for name, value in zip(activations, session.run(activations, inputs), strict=True):
            found = np.abs(value[mask]).max(axis=0)
            maxima[name] = np.maximum(maxima[name], found) if name in maxima else found
    if not maxima:
        raise ValueError("no calibration text to measure the activations on")
    return maxima


def matmul_activations(source: Path) -> list[str]:
    """The tensors the weight MatMuls of `source` read (each once, in graph order): what smoothing measures."""
    import onnx

    names = set(weight_matmuls(source))
    nodes = onnx.load(str(source), load_external_data=False).graph.node
    return list(dict.fromkeys(n.input[0] for n in nodes if n.name in names))


def smoothing_digest(maxima: dict[str, Any], recipe: str = "") -> str:
    """A short fingerprint of smoothing statistics (and of the `recipe` that uses them): part of the cache key of
    vectors computed with them."""
    digest = hashlib.sha1(recipe.encode())
    for name in sorted(maxima):
        digest.update(name.encode())
        digest.update(maxima[name].astype("float32").tobytes())
    return digest.hexdigest()[:10]


def _value_projection(nodes_by_output: dict[str, Any], consumers: dict[str, int], activation: str,
                      weights: dict[str, Any]) -> tuple[Any, str] | None:
    """Where `activation` is an attention context (Reshape/Transpose of `probabilities @ V`, V = x @ W + b, each
    intermediate read once), the value projection's (MatMul node, bias initializer): scaling W's columns and b
    by 1/s scales the context's channels by 1/s, so the smoothing costs no node. None otherwise."""
    def back(name: str) -> Any:
        node = nodes_by_output.get(name)
        while node is not None and node.op_type in ("Reshape", "Transpose") and consumers.get(name) == 1:
            name = node.input[0]
            node = nodes_by_output.get(name)
        return node if consumers.get(name) == 1 else None

    context = back(activation)
    if context is None or context.op_type != "MatMul" or context.input[1] in weights:
        return None
    add = back(context.input[1])
    if add is None or add.op_type != "Add":
        return None
    bias = next((i for i in add.input if i in weights and len(weights[i].dims) == 1), None)
    matmul = next((nodes_by_output.get(i) for i in add.input if i != bias), None)
    if bias is None or matmul is None or matmul.op_type != "MatMul" or matmul.input[1] not in weights \
            or consumers.get(matmul.input[1]) != 1 or consumers.get(bias) != 1:
        return None
    return matmul, bias


def smooth_graph(source: Path, target: Path, maxima: dict[str, Any], alpha: float = SMOOTH_ALPHA) -> Path:
    """The fp32 graph with each weight MatMul's rows multiplied by s and its activation divided by s (SmoothQuant,
    see the module docstring): the same function, flatter activations. MatMuls reading one activation share one s
    (from their weights' joint row maxima)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    nodes = list(graph.node)
    nodes_by_output = {out: node for node in nodes for out in node.output}
    consumers: dict[str, int] = {}
    for node in nodes:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    chosen = set(weight_matmuls(source))
    readers: dict[str, list[Any]] = {}
    for node in nodes:
        if node.name in chosen and node.input[0] in maxima:
            readers.setdefault(node.input[0], []).append(node)

    def array(name: str) -> Any:
        return numpy_helper.to_array(weights[name])

    def store(name: str, value: Any) -> None:
        weights[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))

    muls: dict[str, Any] = {}
    for k, (activation, matmuls) in enumerate(readers.items()):
        w_max = np.max([np.abs(array(n.input[1])).max(axis=1) for n in matmuls], axis=0)
        s = np.maximum(maxima[activation], 1e-5) ** alpha / np.maximum(w_max, 1e-5) ** (1 - alpha)
        for node in matmuls:
            store(node.input[1], array(node.input[1]) * s[:, None])
        value = _value_projection(nodes_by_output, consumers, activation, weights)
        if value is not None and array(value[0].input[1]).shape[1] == len(s):
            store(value[0].input[1], array(value[0].input[1]) / s[None, :])
            store(value[1], array(value[1]) / s)
            continue
        scale, smoothed = f"smooth/{k}/scale", f"smooth/{k}/output"
        graph.initializer.append(numpy_helper.from_array((1 / s).astype(np.float32), scale))
        muls[smoothed] = helper.make_node("Mul", [activation, scale], [smoothed], name=f"smooth/{k}/mul")
        for node in matmuls:
            node.input[0] = smoothed
    graph.ClearField("node")
    for node in nodes:  # each Mul just before its first reader keeps the graph in topological order
        graph.node.extend(muls.pop(name) for name in list(node.input) if name in muls)
        graph.node.append(node)
    onnx.save(model, str(target))
    return target
