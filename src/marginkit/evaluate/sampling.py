"""Sampling N responses per prompt for Best-of-N: the gold world's base policy or any HF causal LM.

Both samplers are pure functions of (prompts, n, seed, settings), so a sample set is reproducible
and can be cached on disk under a hash of exactly those inputs (`SampleSet.key`):

- the world's base policy (`marginkit.data.world.BasePolicy.sample`) seeds each prompt from
  (seed, crc32(prompt)); the first k of n samples are the samples of n = k.
- an HF causal LM samples with `generate(do_sample=True, temperature, top_p, top_k)`, one prompt at a
  time, `batch_size` sequences per call; call j of prompt p runs under
  `torch.manual_seed(seed_of(seed, crc32(p), j))` inside `torch.random.fork_rng`, so the global
  RNG is untouched and the result does not depend on the other prompts. (Unlike the world's
  policy, a different n or batch_size gives other samples: the random draws interleave across rows.)

Prompts are tokenised like the reward model's prompts (`data/tokenize.py`): plain text as
[bos] + prompt tokens, or the chat template with the generation prompt for message lists.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from marginkit.configlib import ConfigError
from marginkit.data.schema import Message, prompt_text

__all__ = ["SamplingConfig", "SampleSet", "samples_key", "sample_world", "sample_hf", "load_policy_lm", "read_prompts",
           "fingerprint_dir"]

Prompt = str | tuple[Message, ...]


@dataclass
class SamplingConfig:
    """Settings of an HF causal-LM policy (ignored by the world's base policy, which has its own)."""

    temperature: float = field(default=1.0, metadata={"help": "Softmax temperature (> 0; Best-of-N needs sampling)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass in (0, 1]; 1 = off."})
    top_k: int = field(default=0, metadata={"help": "Sample from the k most likely tokens; 0 = off."})
    max_new_tokens: int = field(default=64, metadata={"help": "Response length cap in tokens."})
    batch_size: int = field(default=64, metadata={"help": "Sequences per generate call (part of the seed).",
                                                   "flag": "--gen-batch-size"})
    template: Literal["auto", "plain", "chat"] = field(
        default="auto", metadata={"help": "Prompt rendering, as in tokenize.template: chat template for "
                                  "message lists when the tokenizer has one (auto), or plain text."})

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"sampling.temperature={self.temperature}: must be > 0 (Best-of-N samples)")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"sampling.top_p={self.top_p}: must be in (0, 1]")
        for name in ("top_k",):
            if getattr(self, name) < 0:
                raise ConfigError(f"sampling.{name}={getattr(self, name)}: must be >= 0")
        for name in ("max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"sampling.{name}={getattr(self, name)}: must be >= 1")


def _jsonable_prompt(p: Prompt) -> str | list[Message]:
    return p if isinstance(p, str) else [dict(m) for m in p]


def samples_key(policy: dict[str, Any], prompts: Sequence[Prompt], n: int, seed: int) -> str:
    """sha256 (16 hex) of everything that determines a sample set: the policy and its settings, the
    prompts, n and the seed. Known before sampling, so a cached set is found without drawing."""
    blob = json.dumps({"policy": policy, "prompts": [_jsonable_prompt(p) for p in prompts], "n": n, "seed": seed},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class SampleSet:
    """samples[p][k]: response k to prompts[p]; [P][K]. `policy` describes who sampled (for the key)."""

    prompts: list[Prompt]
    samples: list[list[str]]
    seed: int
    policy: dict[str, Any]

    @property
    def n(self) -> int:
        return len(self.samples[0]) if self.samples else 0

    @property
    def key(self) -> str:
        """`samples_key` of this set: names its cache file."""
        return samples_key(self.policy, self.prompts, self.n, self.seed)

    def save(self, path: str | Path) -> Path:
        """Write JSON (to a temporary name, then renamed)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"policy": self.policy, "seed": self.seed, "n": self.n,
                                   "prompts": [_jsonable_prompt(p) for p in self.prompts],
                                   "samples": self.samples}) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> SampleSet:
        d = json.loads(Path(path).read_text())
        prompts = [p if isinstance(p, str) else tuple(p) for p in d["prompts"]]
        return cls(prompts=prompts, samples=d["samples"], seed=d["seed"], policy=d["policy"])


def sample_world(policy: Any, prompts: Sequence[str], n: int, seed: int, progress: bool = False) -> list[list[str]]:
    """[P][n] samples of the gold world's base policy, reproducible by seed (per prompt)."""
    out = []
    for p in tqdm(prompts, desc="sample (world policy)", disable=not progress):
        out.extend(policy.sample([p], n, seed))
    return out


def _call_seed(seed: int, prompt: Prompt, call: int) -> int:
    crc = zlib.crc32(json.dumps(_jsonable_prompt(prompt)).encode())
    return int(np.random.SeedSequence([seed, crc, call]).generate_state(1)[0])


def _prompt_ids(tokenizer: Any, prompt: Prompt, template: str) -> list[int]:
    use_chat = template == "chat" or (template == "auto" and not isinstance(prompt, str)
                                      and getattr(tokenizer, "chat_template", None))
    if use_chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("sampling.template='chat' but the policy's tokenizer has no chat template; use 'plain'")
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        return list(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True))
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + tokenizer(prompt_text(prompt), add_special_tokens=False)["input_ids"]


@torch.no_grad()
def sample_hf(model: Any, tokenizer: Any, prompts: Sequence[Prompt], n: int, seed: int,
              cfg: SamplingConfig | None = None, progress: bool = False) -> list[list[str]]:
    """[P][n] responses of an HF causal LM (module docstring for the seeding). Eval mode, no grad."""
    cfg = cfg or SamplingConfig()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    gen_kwargs = dict(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                      max_new_tokens=cfg.max_new_tokens, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
    out: list[list[str]] = []
    devices = [device] if device.type == "cuda" else []
    for prompt in tqdm(prompts, desc="sample (LM policy)", disable=not progress):
        ids = torch.tensor([_prompt_ids(tokenizer, prompt, cfg.template)], dtype=torch.long, device=device)  # [1, T]
        texts: list[str] = []
        for call, start in enumerate(range(0, n, cfg.batch_size)):
            m = min(cfg.batch_size, n - start)
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(_call_seed(seed, prompt, call))
                seqs = model.generate(input_ids=ids.expand(m, -1), attention_mask=torch.ones_like(ids).expand(m, -1),
                                      **gen_kwargs)  # [m, T + new]
            texts += [t.strip() for t in tokenizer.batch_decode(seqs[:, ids.shape[1]:], skip_special_tokens=True)]
        out.append(texts)
    model.train(was_training)
    return out


def load_policy_lm(path: str | Path, device: str | torch.device | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) of an HF causal LM folder or hub name, on `device` (default: CUDA if present)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path)).to(device)
    return model, tokenizer


def fingerprint_dir(path: str | Path, full_hash_below: int = 256 * 2**20) -> str:
    """sha256 (16 hex) identifying a model folder: every file's relative name and content (files over
    `full_hash_below` bytes by name, size and modification time, to keep big checkpoints cheap)."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder (give a saved model folder)")
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = f.relative_to(root).as_posix()
        if rel.startswith(("eval/", "bon/")):  # reports written next to the model are not the model
            continue
        st = f.stat()
        h.update(rel.encode() + b"\0")
        if st.st_size > full_hash_below:
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        else:
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def read_prompts(path: str | Path) -> list[Prompt]:
    """Prompts from a JSONL file: each line a JSON string, or an object with "prompt" (text or a
    list of {"role", "content"} messages). Blank lines are skipped; anything else is an error."""
    from marginkit.data.schema import DataError

    path = Path(path)
    if not path.exists():
        raise DataError(str(path), None, None, "file not found", "give a JSONL file of prompts or world:test")
    out: list[Prompt] = []
    with path.open(encoding="utf-8") as fh:
        for row, line in enumerate(fh):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(str(path), row, None, f"invalid JSON ({e.msg})") from None
            p = rec.get("prompt") if isinstance(rec, dict) else rec
            if isinstance(p, list) and all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in p) and p:
                out.append(tuple({"role": m["role"], "content": m["content"]} for m in p))
            elif isinstance(p, str) and p.strip():
                out.append(p)
            else:
                raise DataError(str(path), row, "prompt", f"need a non-empty string or message list, got {p!r:.80}",
                                'write {"prompt": "..."} per line')
    if not out:
        raise DataError(str(path), None, None, "no prompts in the file")
    return out

