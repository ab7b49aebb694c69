"""Build the quality-proof models: a small Llama trained here, its INT4 variants, and eval sets.

Runs inside the quantization venv (.ci/setup-quality-models.sh makes it: torch CPU + llm-compressor),
never in ridgeline's own environment, so it imports nothing of ridgeline. Everything is
deterministic (fixed seeds, fixed thread count, a corpus every machine has: the Python standard
library's own top-level modules), so the output can be cached under a hash of this recipe.

    python quality_build.py OUT base       # tokenizer, base/ (bf16), evals/
    python quality_build.py OUT variants   # gptq/ awq/ rtn/ broken/ and *-dequant/
    python quality_build.py hash           # the recipe's content hash (names the cache directory)
    python quality_build.py pins           # what the quantization venv installs

Layout of OUT and the meaning of each directory: docs/quality.md and QUALITY.md's "Models".
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import shutil
import sys
import sysconfig
import time
from pathlib import Path

# what the quantization venv holds (torch: the CPU build pip takes from the local wheel)
PINS = ("torch==2.13.0", "llmcompressor==0.14.0.1")
RECIPE_FILES = ("quality_build.py", "quality_quantize.py")
THREADS = 2
SEED = 1234
VOCAB = 2048
SEQ = 256
BATCH = 16
STEPS = 300
LR = 3e-3
GROUP = 128
CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256, "intermediate_size": 768,
    "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
    "vocab_size": VOCAB, "max_position_embeddings": 2048, "bos_token_id": 0, "eos_token_id": 1,
    "torch_dtype": "bfloat16", "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": False,
    "rope_theta": 10000.0, "attention_bias": False, "mlp_bias": False, "initializer_range": 0.02,
}
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
HELD_OUT_EVERY = 6  # every 6th standard-library module (sorted by name) is held out for the eval sets
N_FACTS = 96  # synthetic facts mixed into training; the task set asks 64 of them
FACT_REPEATS = 60
N_TEXT_DOCS, TEXT_DOC_TOKENS = 48, 256
N_PROMPTS, PROMPT_TOKENS = 32, 48
N_TASK = 64
# the task: name the identifier that comes next in held-out code, where the language makes it regular
# but not certain (which exception is raised or caught, a comparison with None); the base model gets
# a fair share, not all (about a third to a half when this was written)
TASK_PATTERNS = {"raise": r"raise ([A-Z]\w+)", "except": r"except ([A-Z]\w+)", "none": r"(?:is not|is|=) (None)\b"}
TASK_CONTEXT_CHARS = 400
# what marks a dequantized-bf16 directory (read by the quality measurement, see QUALITY.md)
ORIGIN_FILE = "ridgeline_quality.json"


def recipe_hash() -> str:
    """Content hash of what decides the output: these recipe files, the pins and the interpreter's
    version (its standard library is the corpus). Stdlib only, so any python can compute it."""
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for name in RECIPE_FILES:
        h.update((here / name).read_bytes())
    h.update(repr((PINS, sys.version_info[:3])).encode())
    return h.hexdigest()[:16]


def log(msg: str) -> None:
    print(f"[quality-build {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def stdlib_modules() -> list[tuple[str, str]]:
    """(name, text) of the interpreter's own top-level standard-library .py files, sorted by name."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for p in sorted(lib.glob("*.py")):
        try:
            out.append((p.name, p.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, OSError):
            continue
    return out


def split_modules() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    mods = stdlib_modules()
    train = [m for i, m in enumerate(mods) if i % HELD_OUT_EVERY != 0]
    held = [m for i, m in enumerate(mods) if i % HELD_OUT_EVERY == 0]
    return train, held


def facts() -> list[tuple[str, str]]:
    """(subject, two-digit code): made-up names, so no held-out text and no prior knowledge can answer."""
    rng = random.Random(SEED)
    syll = ["ka", "lo", "mi", "re", "tu", "zo", "ne", "bi", "sa", "ru", "vo", "qe", "di", "fa", "ho", "xu"]
    seen: set[str] = set()
    out = []
    while len(out) < N_FACTS:
        name = "".join(rng.choice(syll) for _ in range(3))
        if name in seen:
            continue
        seen.add(name)
        out.append((name, str(rng.randint(10, 99))))
    return out


def fact_prompt(name: str) -> str:
    return f"# the code of {name} is"


def train_tokenizer(train_texts: list[str], d: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(train_texts, trainer)
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "model_max_length": CONFIG["max_position_embeddings"], "chat_template": CHAT_TEMPLATE}, indent=1))
    (d / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))


def _chunks(text: str, n_chars: int) -> list[str]:
    """Split text at line ends into pieces of about n_chars."""
    out, cur = [], []
    size = 0
    for line in text.splitlines(keepends=True):
        cur.append(line)
        size += len(line)
        if size >= n_chars:
            out.append("".join(cur))
            cur, size = [], 0
    if cur:
        out.append("".join(cur))
    return out


def training_stream(tok, train: list[tuple[str, str]]) -> list[int]:
    """Token ids of the training text: module chunks and fact lines, shuffled with a fixed seed."""
    docs = []
    for _, text in train:
        docs.extend(_chunks(text, 2000))
    fact_docs = [f"{fact_prompt(n)} {c}." for n, c in facts()] * FACT_REPEATS
    docs.extend(fact_docs)
    random.Random(SEED + 1).shuffle(docs)
    ids: list[int] = []
    for enc in tok.encode_batch(docs):
        ids.append(0)
        ids.extend(enc.ids)
        ids.append(1)
    return ids


def write_evals(tok, held: list[tuple[str, str]], out: Path) -> None:
    """Eval sets from the held-out modules (text, prompts) and the memorised facts (task)."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED + 2)
    pieces = []  # (module, token ids) windows of the held-out text
    for name, text in held:
        ids = tok.encode(text).ids
        for start in range(0, len(ids) - TEXT_DOC_TOKENS, TEXT_DOC_TOKENS):
            pieces.append((name, start, ids[start:start + TEXT_DOC_TOKENS]))
    rng.shuffle(pieces)
    if len(pieces) < N_TEXT_DOCS + N_PROMPTS:
        raise RuntimeError(f"held-out text has only {len(pieces)} windows")
    with open(out / "text.jsonl", "w") as f:
        for name, start, ids in pieces[:N_TEXT_DOCS]:
            f.write(json.dumps({"id": f"{name}@{start}", "text": tok.decode(ids)}) + "\n")
    with open(out / "prompts.jsonl", "w") as f:
        for name, start, ids in pieces[N_TEXT_DOCS:N_TEXT_DOCS + N_PROMPTS]:
            f.write(json.dumps({"id": f"{name}@{start}", "prompt": tok.decode(ids[:PROMPT_TOKENS])}) + "\n")
    with open(out / "task.jsonl", "w") as f:
        for item in task_items(held):
            f.write(json.dumps(item) + "\n")


def task_items(held: list[tuple[str, str]]) -> list[dict]:
    """N_TASK {id, prompt, reference}: the code before an identifier (up to the space before it) and the
    identifier, an equal share from each of TASK_PATTERNS, from the held-out modules."""
    per = -(-N_TASK // len(TASK_PATTERNS))
    items: list[dict] = []
    for fam, pattern in TASK_PATTERNS.items():
        found = []
        for name, text in held:
            for m in re.finditer(pattern, text):
                found.append({"id": f"{fam}:{name}@{m.start(1)}",
                              "prompt": text[max(0, m.start(1) - TASK_CONTEXT_CHARS):m.start(1)].rstrip(" "),
                              "reference": m.group(1)})
        random.Random(SEED + 5).shuffle(found)
        items.extend(found[:per])
    return items[:N_TASK]


def set_determinism():
    import torch

    torch.manual_seed(SEED)
    random.seed(SEED)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)


def build_base(out: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    set_determinism()
    t0 = time.time()
    base = out / "base"
    tmp = out / "base.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    train, held = split_modules()
    log(f"{len(train)} training modules, {len(held)} held out")
    train_tokenizer([t for _, t in train], tmp)
    tok = Tokenizer.from_file(str(tmp / "tokenizer.json"))
    stream = torch.tensor(training_stream(tok, train), dtype=torch.long)
    log(f"training stream: {len(stream)} tokens; tokenizer took {time.time() - t0:.0f}s")

    cfg = LlamaConfig(**{k: v for k, v in CONFIG.items() if k not in ("architectures", "model_type", "torch_dtype")})
    model = LlamaForCausalLM(cfg).float()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.01)
    gen = torch.Generator().manual_seed(SEED)
    warm = max(1, STEPS // 20)
    losses = []
    for step in range(STEPS):
        lr = LR * min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * step / STEPS))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(stream) - SEQ - 1, (BATCH,), generator=gen)
        x = torch.stack([stream[s:s + SEQ] for s in starts.tolist()])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == STEPS - 1:
            log(f"step {step}/{STEPS} loss {sum(losses[-50:]) / len(losses[-50:]):.3f} ({time.time() - t0:.0f}s)")
    train_s = time.time() - t0

    model = model.to(torch.bfloat16)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(CONFIG, indent=1))
    (tmp / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": 1}))
    (tmp / ORIGIN_FILE).write_text(json.dumps({
        "weights": "real", "made_by": "quality_build.py base", "steps": STEPS, "final_loss": losses[-1],
        "uniform_loss": math.log(VOCAB), "train_seconds": round(train_s, 1)}, indent=1))
    write_evals(tok, held, tmp / "evals")
    shutil.rmtree(base, ignore_errors=True)
    shutil.rmtree(out / "evals", ignore_errors=True)
    shutil.move(str(tmp / "evals"), str(out / "evals"))
    tmp.rename(base)
    log(f"base/ and evals/ written in {time.time() - t0:.0f}s")


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[1] in ("hash", "pins"):
        print(recipe_hash() if argv[1] == "hash" else " ".join(PINS))
        return 0
    if len(argv) != 3 or argv[2] not in ("base", "variants"):
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    if argv[2] == "base":
        build_base(out)
    else:
        from quality_quantize import build_variants  # beside this file, same venv

        build_variants(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
