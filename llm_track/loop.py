"""One step of the paper's LLM protocol (arXiv 2605.04266, section 4), top to bottom.

Per step: pick a prompt; the base model (policy with its LoRA adapter disabled) samples a reference
answer and the policy samples n candidates (KV cache, top-p, temperature, min/max new tokens), in
one token loop over n + 1 rows whose reference row runs without the LoRA update (peft's
mixed-adapter batch semantics; two loops, base then policy, when the policy cannot mix: see
``Protocol.generate_step``); candidates + reference are scored in one batched forward of the base
model (oracle utility U = clip(-NLL per token + 5, -15, 5)) and one of the reward model (reward r
and head features h); each candidate's score is r minus gamma times the FPO penalty (closed form,
see ``fpo_head``); the best candidate wins (``skip_empty``: among the non-empty ones; the
random-winner control: a seeded uniform pick); the RM head takes a Bradley-Terry step on (winner
vs reference) with soft label sigmoid(U_w - U_ref) (AdamW, accumulated over ``rm_grad_accum``
steps); the policy takes an SFT step on the winner (whole sequence or response, ``sft_on``).
Prompts are in the policy's chat template with the run's fixed date, cut in the user's text
(never the template) to ``max_prompt_tokens``; every end-of-turn id of the tokenizer and model
ends an answer. Oracle queries follow one rule (``Protocol.oracle_cost``).

Randomness is explicit: sampling uses a ``torch.Generator`` seeded from (seed, step) and the
dropout of the SFT step runs under a forked global RNG seeded the same way, so a step's outcome
depends only on the seed, the step index and the model/optimiser state (which checkpoints hold).
In the one-loop generation each token step draws once for all n + 1 rows (candidates, then the
reference); the two-loop generation drew the reference's whole answer first, then the candidates'.
Both give each row an exact sample of its own model, independent across rows, but the same seed
gives different answers in the two modes (runs made before the one-loop generation are not
reproduced bit for bit; same seed, same mode, same output still holds).

The decoding options (``top_p_topk``, ``static_cache``, ``compile_decode``; see ``sample`` and
``StaticDecoder``) change no token (the top-k top-p, tested against the full sort) or only the
rounding of the logits (the static cache, compiled or not).
"""

from __future__ import annotations

import inspect
import json
import os
import random
import shutil
import time
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from llm_track.config import COMPILE_MODES, LLMConfig, LLMTrackError
from llm_track.fpo_head import autograd_penalty, fpo_scores, head_features
from llm_track.models import Models


# --------------------------------------------------------------------------- helpers
def _render_prompt(tok, content: str, date: str | None) -> list[int]:
    """Token ids of one user turn in the policy's format: its chat template (with ``date`` as the
    template's ``date_string``) when the tokenizer has one, else ``question : ... answer :``."""
    if getattr(tok, "chat_template", None):
        text = tok.apply_chat_template(
            [{"role": "user", "content": content}],
            tokenize=False,
            add_generation_prompt=True,
            date_string=date,
        )
        return tok(text, add_special_tokens=False)["input_ids"]
    ids = tok(f"question : {content} answer :", add_special_tokens=False)["input_ids"]
    return ([tok.bos_token_id] if tok.bos_token_id is not None else []) + ids


def encode_prompt(tok, prompt: str, max_tokens: int, device, date: str | None = None):
    """Token ids of a prompt in the policy's format, at most ``max_tokens`` long.

    A prompt that does not fit loses the end of the *user's text*; the template (begin-of-text,
    system and user headers, the assistant header) is always whole. ``date`` fixes the date that
    Llama-3.x templates write (``date_string``; without it they write today's).
    """
    ids = _render_prompt(tok, prompt, date)
    if len(ids) > max_tokens:
        user = tok(prompt, add_special_tokens=False)["input_ids"]
        frame = len(ids) - len(user)  # the template's tokens
        keep = max_tokens - frame
        while keep > 0:  # re-tokenising the cut text can merge differently: shrink until it fits
            ids = _render_prompt(tok, tok.decode(user[:keep]), date)
            if len(ids) <= max_tokens:
                break
            keep -= max(1, len(ids) - max_tokens)
        if keep <= 0:
            raise LLMTrackError(
                f"--max-prompt-tokens {max_tokens} leaves no room for the user's text: the chat "
                f"template alone takes about {frame} tokens"
            )
    return torch.tensor(ids, dtype=torch.long, device=device)


def _nucleus_sorted(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """The top-p filter by a full sort of each row (unnormalised): the smallest set of most likely
    tokens whose mass reaches ``top_p`` keeps its probabilities, the rest gets 0."""
    sorted_p, idx = probs.sort(dim=-1, descending=True)
    drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest set with mass >= top_p
    sorted_p = sorted_p.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter(-1, idx, sorted_p)


def _top_p_probs(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Softmax of ``logits`` filtered to the nucleus of mass ``top_p`` and renormalised, by a
    full sort of the vocabulary (the reference that ``_top_p_probs_topk`` reproduces)."""
    probs = torch.softmax(logits, dim=-1)
    if top_p >= 1.0:
        return probs
    out = _nucleus_sorted(probs, top_p)
    return out / out.sum(-1, keepdim=True)


TOP_P_MARGIN = 1e-4
"""How far from ``top_p`` every cumulative mass of the top-k must be for a row to skip the full
sort: far more than the rounding of any summation order of <= 1 in float32 (~1e-6), so the
decisions equal the full sort's whatever order its cumulative sum adds in."""


def _nucleus_topk(probs: torch.Tensor, top_p: float, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-p filter from the ``k`` most likely tokens of each row, without a host sync:
    (unnormalised filtered probabilities, rows that need the full sort instead).

    A row's result is exactly ``_nucleus_sorted``'s when (a) the nucleus ends inside the top k
    (the k-th token is dropped), (b) no cumulative mass of the top k lies within ``TOP_P_MARGIN``
    of ``top_p`` (so no rounding can flip a keep/drop decision, and the decisions form a prefix)
    and (c) the last kept probability is strictly above the first dropped one (no tie across the
    cut, where the full sort's order among equal values would decide which of them is kept).
    Then the nucleus is every token whose probability is >= the last kept one. Other rows are
    flagged for ``_fill_sorted``.
    """
    vals = probs.topk(k, dim=-1).values  # sorted: the first k values of the full sort
    excl = vals.cumsum(-1) - vals  # the mass before each token, as the full sort computes it
    keep = excl <= top_p
    m = keep.sum(-1, keepdim=True).clamp(1, k - 1)  # kept tokens (if a prefix)
    last, first_out = vals.gather(-1, m - 1), vals.gather(-1, m)
    prefix = torch.arange(k, device=probs.device) < m
    ok = (
        ~keep[:, -1]
        & ((excl - top_p).abs() > TOP_P_MARGIN).all(-1)
        & (keep == prefix).all(-1)
        & (last > first_out).squeeze(-1)
    )
    return probs.masked_fill(probs < last, 0.0), ~ok


def _fill_sorted(out: torch.Tensor, probs: torch.Tensor, need: torch.Tensor, top_p: float):
    """``out`` with the rows flagged in ``need`` replaced by the full sort's filter."""
    rows = need.nonzero().squeeze(1)
    return out.index_copy(0, rows, _nucleus_sorted(probs.index_select(0, rows), top_p))


def _top_p_probs_topk(logits: torch.Tensor, top_p: float, k: int) -> torch.Tensor:
    """``_top_p_probs`` (bit for bit) with a top-k in place of the full sort where it suffices
    (``_nucleus_topk``); ``k`` 0 or >= the vocabulary: the full sort. One host sync (whether
    any row needs the full sort) when ``top_p`` < 1."""
    probs = torch.softmax(logits, dim=-1)
    if top_p >= 1.0:
        return probs
    if 0 < k and max(k, 2) < probs.shape[-1]:
        out, need = _nucleus_topk(probs, top_p, max(k, 2))
        if bool(need.any()):
            out = _fill_sorted(out, probs, need, top_p)
    else:
        out = _nucleus_sorted(probs, top_p)
    return out / out.sum(-1, keepdim=True)


def _forward_kwarg(model, names: tuple[str, ...]) -> str | None:
    """The first of ``names`` that the (base) model's forward accepts (versions differ)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return next((n for n in names if n in params), None)


STOP_CHECK_EVERY = {"cpu": 1, "other": 8}
"""Token steps between checks that every row has ended, by device type, where the token loop has
no host sync of its own (greedy, ``top_p`` = 1 or ``top_p_topk`` 0): on an accelerator each check
is a host sync; on the CPU it is not, and forwards past the end would cost, so every token. A
loop that ran past the end of its last row is cut back and its generator's state restored, so the
output and the generator are those of a check at every token. (With the top-k top-p the check
rides on that filter's one sync per token and stops the loop before the next draw.)"""
COMPILE_BACKEND = "inductor"
"""``torch.compile`` backend of the decode step (tests use ``eager``: the same tracing and guards,
no code generation)."""


def _new_static_cache(model, batch: int, max_len: int, device):
    """A ``transformers.StaticCache`` of ``max_len`` positions for ``batch`` rows of ``model``."""
    from transformers import StaticCache

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    dtype = base.get_input_embeddings().weight.dtype
    # transformers >= 4.56 takes (config, max_cache_len) and allocates on the first update; older
    # versions want the batch size, device and dtype (newer ones ignore them)
    return StaticCache(
        config=base.config, max_cache_len=max_len, max_batch_size=batch, device=device, dtype=dtype
    )


_COMPILED_ROW_DROP: dict[str, torch.Tensor] = {}
"""The row mask that the compiled decode step's LoRA hooks read (``StaticDecoder.rows``). A module
global, so the compiled code fetches the current tensor on every call: dynamo does not guard on
module hooks (``torch._dynamo.config.skip_nnmodule_hook_guards``), so a compiled step must see the
same hook functions on every call, with what changes held in tensors."""


def _compiled_row_hook(module, args, out):
    drop = _COMPILED_ROW_DROP["drop"]
    return out.masked_fill(drop.view(-1, *([1] * (out.dim() - 1))), 0.0)


class StaticDecoder:
    """Static KV cache and decode step of one model for ``sample`` (``static_cache``,
    ``compile_decode``).

    The cache (``transformers.StaticCache``, ``max_len`` positions: the longest prompt plus the
    longest answer) is allocated once per batch size and reset between calls, so the decode step
    sees the same shapes and tensor addresses every token and every call; the prompt runs through
    the plain forward (its length varies), each next token through ``step``, which is
    ``torch.compile``-d (``compile_mode``, backend ``COMPILE_BACKEND``, static shapes) unless
    ``"off"``. Attention then spans all ``max_len`` positions with the unwritten ones masked: the
    logits round differently from the growing cache's (~1e-6 on the tiny model), so greedy tokens
    agree and sampled ones agree unless a draw falls that close to a boundary of the distribution.

    A compiled step mixes base and adapter rows by its own row mask only (``rows``): the same hook
    function on every ``lora_B`` of the active adapter in every call, reading the mask from a
    global; peft's per-call ``adapter_names`` hooks and ``_row_masked_lora``'s fresh closures
    would be baked into the compiled code (dynamo does not guard on module hooks).
    """

    def __init__(self, model, max_len: int, compile_mode: str = "off"):
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}")
        self.model, self.max_len, self.compile_mode = model, max_len, compile_mode
        self.cache_kw = _forward_kwarg(model, ("cache",)) or "past_key_values"
        # transformers < 5 also wants the cache positions of the new tokens
        self.cache_position = _forward_kwarg(model, ("cache_position",)) is not None
        self._caches: dict = {}
        self.step, self.compiled, self.row_modules = self._step, compile_mode != "off", []
        if self.compiled:
            kw = {"mode": compile_mode} if COMPILE_BACKEND == "inductor" else {}
            self.step = torch.compile(self._step, backend=COMPILE_BACKEND, dynamic=False, **kw)
            self.adapter = mixed_batch_adapter(model)
            if self.adapter is not None and row_mask_ok(model, self.adapter):
                from peft.tuners.lora import LoraLayer

                self.row_modules = [
                    m.lora_B[self.adapter]
                    for m in model.modules()
                    if isinstance(m, LoraLayer) and self.adapter in m.lora_B
                ]

    @contextmanager
    def rows(self, adapter_names: list[str] | None, n: int, device):
        """The compiled step's row mask for one token loop: rows named ``"__base__"`` run without
        the LoRA update, the others with it (all of them when ``adapter_names`` is None)."""
        if not self.row_modules:
            if adapter_names is not None:
                raise ValueError("a compiled decode step mixes rows only for a plain LoRA adapter")
            yield
            return
        names = adapter_names or [self.adapter] * n
        if set(names) - {BASE_ADAPTER, self.adapter}:
            raise ValueError(f"the compiled decode step mixes '__base__' and {self.adapter!r} only")
        _COMPILED_ROW_DROP["drop"] = torch.tensor([a == BASE_ADAPTER for a in names], device=device)
        handles = []
        try:
            for m in self.row_modules:
                handles.append(m.register_forward_hook(_compiled_row_hook))
            yield
        finally:
            for h in handles:
                h.remove()
            _COMPILED_ROW_DROP.pop("drop", None)

    def cache(self, batch: int, device):
        """The (reset) cache for ``batch`` rows."""
        cache = self._caches.get(batch)
        if cache is None:
            cache = self._caches[batch] = _new_static_cache(self.model, batch, self.max_len, device)
        else:
            cache.reset()
        return cache

    def forward(self, ids, positions, cache, extra):
        """The plain forward of ``ids`` at ``positions`` (1-D) into ``cache``: the logits (float)
        of each row's last position."""
        kw = {"cache_position": positions} if self.cache_position else {}
        out = self.model(
            input_ids=ids,
            position_ids=positions.unsqueeze(0),
            use_cache=True,
            **{self.cache_kw: cache},
            **kw,
            **extra,
        )
        return out.logits[:, -1].float()

    def _step(self, ids, positions, cache, extra):
        return self.forward(ids, positions, cache, extra)


@torch.no_grad()
def sample(
    model,
    prompt_ids: torch.Tensor,
    n: int,
    *,
    max_new: int,
    min_new: int,
    eos_id: int | tuple[int, ...],
    pad_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    greedy: bool = False,
    adapter_names: list[str] | None = None,
    mixing: str = "row-mask",
    top_p_topk: int = 0,
    decoder: StaticDecoder | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """n answers to one prompt with a KV cache: (ids (n, T) right-padded, lengths (n,)).

    ``eos_id``: the end-of-turn token id, or all of them (e.g. Llama-3's ``<|eot_id|>``,
    ``<|eom_id|>`` and ``<|end_of_text|>``): any of them ends a row. Lengths count the end token
    when one was produced; end tokens are masked before ``min_new`` tokens. T is the longest length.
    ``adapter_names`` (one per row, peft LoRA models in eval mode): row i runs through adapter
    ``adapter_names[i]`` or, for ``"__base__"``, the base model, by ``mixing``: ``"peft"`` (peft's
    mixed-adapter batch forward; needs ``mixed_batch_adapter``) or ``"row-mask"``
    (``_row_masked_lora``; needs ``row_mask_ok``). All rows share the prompt, so no padding or
    attention mask. Each token step draws once from ``generator`` for all n rows (row-major).
    ``top_p_topk`` > 0: top-p from the most likely ``top_p_topk`` tokens where that gives the full
    sort's distribution (``_nucleus_topk``), the full sort for the other rows; same tokens as 0.
    ``decoder``: a static KV cache and (compiled) decode step for ``model`` (``StaticDecoder``);
    None: the model's own growing cache.
    """
    ids, dev = prompt_ids.unsqueeze(0).expand(n, -1).contiguous(), prompt_ids.device
    eos = torch.tensor(eos_id if isinstance(eos_id, (tuple, list)) else [eos_id], device=dev)
    # the KV-cache argument/output: ``cache`` (transformers 5) or ``past_key_values``
    cache_kw = _forward_kwarg(model, ("cache",)) or "past_key_values"
    extra, hooks = {}, nullcontext()
    if adapter_names is not None and len(adapter_names) != n:
        raise ValueError(f"adapter_names has {len(adapter_names)} entries for {n} rows")
    if decoder is not None and decoder.compiled:
        if adapter_names is not None and mixing != "row-mask":
            raise ValueError("a compiled decode step mixes rows by 'row-mask' only")
        hooks = decoder.rows(adapter_names, n, dev)
    elif adapter_names is not None:
        if mixing == "row-mask":
            hooks = _row_masked_lora(model, adapter_names, dev)
        elif mixing != "peft":
            raise ValueError(f"mixing must be 'row-mask' or 'peft'; got {mixing!r}")
        elif HOOKS_ONCE_PER_LOOP and hasattr(model, "_enable_peft_forward_hooks"):
            # What ``model(..., adapter_names=...)`` does around each forward (validate the
            # names, hook every LoRA layer, unhook), done once for the whole token loop.
            hooks = model._enable_peft_forward_hooks(adapter_names=adapter_names)
        else:
            extra["adapter_names"] = adapter_names
    prompt_len = ids.shape[1]
    if decoder is not None:
        if prompt_len + max_new > decoder.max_len:
            raise ValueError(
                f"prompt ({prompt_len}) + max_new ({max_new}) exceeds the static cache "
                f"({decoder.max_len} positions)"
            )
        positions = torch.arange(prompt_len + max_new, device=dev)
    sampling = not greedy and top_p < 1.0
    k = max(top_p_topk, 2)
    vocab_topk = False  # the top-k filter, with its one host sync per token (set at t = 0)
    # without it: check for the end every STOP_CHECK_EVERY tokens (every token when draws come
    # from the global RNG, whose state is not restored)
    every = STOP_CHECK_EVERY["cpu" if dev.type == "cpu" else "other"]
    every = 1 if generator is None and not greedy else every
    states: dict[int, torch.Tensor] = {}  # generator state after each draw since the last check
    with _no_leaked_adapter_name_hooks(model, enabled=mixing == "peft"), hooks:
        done = torch.zeros(n, dtype=torch.bool, device=dev)
        lengths = torch.full((n,), max_new, dtype=torch.long, device=dev)
        tokens, cache = [], None if decoder is None else decoder.cache(n, dev)
        for t in range(max_new):  # the first forward runs the prompt, the others one token
            if decoder is None:
                out = model(input_ids=ids, use_cache=True, **{cache_kw: cache}, **extra)
                cache, logits = getattr(out, cache_kw), out.logits[:, -1].float()
            elif t == 0:
                logits = decoder.forward(ids, positions[:prompt_len], cache, extra)
            else:
                pos = positions[prompt_len + t - 1 : prompt_len + t]
                logits = decoder.step(ids, pos, cache, extra)
            if t == 0:
                vocab_topk = sampling and top_p_topk > 0 and k < logits.shape[-1]
            if t < min_new:
                logits[:, eos] = float("-inf")
            if greedy:
                nxt = logits.argmax(-1)
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                if sampling:
                    if vocab_topk:
                        kept, need = _nucleus_topk(probs, top_p, k)
                        # the token step's one host sync: did every row end at the last token,
                        # and does any row need the full sort
                        ended_all, any_need = torch.stack([done.all(), need.any()]).tolist()
                        if ended_all:
                            break
                        if any_need:
                            kept = _fill_sorted(kept, probs, need, top_p)
                    else:
                        kept = _nucleus_sorted(probs, top_p)
                    probs = kept / kept.sum(-1, keepdim=True)
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
                if not vocab_topk and every > 1:
                    states[t] = generator.get_state()
            nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
            tokens.append(nxt)
            ended = ~done & torch.isin(nxt, eos)
            lengths = torch.where(ended, t + 1, lengths)
            done |= ended
            if not vocab_topk and (t + 1) % every == 0:
                if bool(done.all()):
                    break
                states.clear()
            ids = nxt.unsqueeze(1)
    resp = torch.stack(tokens, 1)
    if not vocab_topk and every > 1:
        end = int(lengths.max())  # the token at which the last row ended (max_new if one runs on)
        if end < resp.shape[1]:  # ran past it: cut back, and rewind the generator to that draw
            resp = resp[:, :end]
            if end - 1 in states:
                generator.set_state(states[end - 1])
    return resp, lengths


# --------------------------------------------------------------------------- mixed batches
BASE_ADAPTER = "__base__"
"""peft's name, in ``adapter_names``, for rows that run through the base model (adapters off)."""
MIXING = "row-mask"
"""Default way to run ``"__base__"`` rows and adapter rows in one batch: ``"row-mask"`` or
``"peft"``. peft's ``LoraLayer._mixed_batch_forward`` gathers and scatters the rows of each adapter
with Python-list indices (a host-to-device copy and a stream sync, several per LoRA layer per
forward): on an H200 with Llama-3.2-1B that made one forward of 9 rows ~2x slower, eating the gain
of the single loop. The row mask adds one ``masked_fill`` kernel per LoRA layer and no sync."""
HOOKS_ONCE_PER_LOOP = True
"""Enter peft's ``_enable_peft_forward_hooks(adapter_names=...)`` once per token loop instead of
passing ``adapter_names`` to each forward (which re-walks all modules and re-hooks every LoRA
layer per forward: measurable per-token overhead on a 16-layer model)."""


def mixed_batch_adapter(model) -> str | None:
    """The adapter to mix with ``"__base__"`` rows in one batch, or None when that is not possible.

    peft's mixed-adapter batch inference (peft >= 0.10, ``adapter_names=`` forward kwarg, see
    ``LoraModel._enable_peft_forward_hooks`` in peft/tuners/lora/model.py and
    ``LoraLayer._mixed_batch_forward`` in peft/tuners/lora/layer.py) needs: a ``PeftModel`` over a
    ``LoraModel`` with one active, enabled, unmerged adapter without DoRA, and (checked at forward
    time by peft) eval mode. Anything else (a plain model, another tuner, an old peft) gets None,
    and callers fall back to one forward loop per model.
    """
    try:
        import peft
        from packaging.version import Version
        from peft import PeftModel
        from peft.tuners.lora import LoraLayer, LoraModel
    except ImportError:
        return None
    if Version(peft.__version__) < Version("0.10.0") or not isinstance(model, PeftModel):
        return None
    base = model.base_model
    if not isinstance(base, LoraModel) or not hasattr(base, "_enable_peft_forward_hooks"):
        return None
    if getattr(model, "_adapters_disabled", False) or len(model.active_adapters) != 1:
        return None
    name = model.active_adapters[0]
    config = model.peft_config.get(name)
    if config is None or config.is_prompt_learning or getattr(config, "use_dora", False):
        return None
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    mixable = all(
        not (m.merged or m.disable_adapters) and hasattr(m, "_mixed_batch_forward") for m in layers
    )
    return name if mixable and any(name in m.lora_A for m in layers) else None


def row_mask_ok(model, name: str) -> bool:
    """Whether ``_row_masked_lora`` is exact for ``model`` with adapter ``name`` (as active adapter).

    Plain LoRA only: each LoRA layer adds ``lora_B(lora_A(dropout(x))) * scaling`` to the base
    output, so zeroing ``lora_B``'s output rows gives the base model's rows. Not for variants
    (DoRA, ...), LoRA on embeddings, or modules_to_save / trainable tokens (those replace modules
    of the base model, which a mask on the LoRA update does not undo).
    """
    from peft.tuners.lora import LoraLayer

    config = model.peft_config[name]
    if getattr(config, "modules_to_save", None) or getattr(config, "trainable_token_indices", None):
        return False
    for m in model.modules():
        if not isinstance(m, LoraLayer) or name not in m.lora_A:
            continue
        variant = name in getattr(m, "lora_variant", {}) or getattr(m, "use_dora", {}).get(name)
        if variant or name in getattr(m, "lora_embedding_A", {}):
            return False
        if not isinstance(m.lora_B[name], torch.nn.Module) or m.active_adapters != [name]:
            return False
    return True


@contextmanager
def _row_masked_lora(model, adapter_names: list[str], device):
    """Rows named ``"__base__"`` run without the LoRA update, the others with the active adapter.

    A forward hook on each layer's ``lora_B`` zeroes the rows of its output (the LoRA update before
    scaling) that belong to ``"__base__"``, so those rows get exactly the base layer's output. The
    row mask is built once, so the token loop has no host-device sync; hooks go in ``finally``.
    """
    from peft.tuners.lora import LoraLayer

    names = {a for a in adapter_names if a != BASE_ADAPTER} or set(model.active_adapters)
    if len(names) != 1:
        raise ValueError(f"row-mask mixing takes one adapter besides '__base__'; got {names}")
    (name,) = names
    if not row_mask_ok(model, name):
        raise ValueError("row-mask mixing needs a plain LoRA adapter; use mixing='peft'")
    drop = torch.tensor([a == BASE_ADAPTER for a in adapter_names], device=device)

    def hook(module, args, out):  # ``sample`` checked: one name per row
        return out.masked_fill(drop.view(-1, *([1] * (out.dim() - 1))), 0.0)

    handles = []
    try:
        for m in model.modules():
            if isinstance(m, LoraLayer) and name in m.lora_B:
                handles.append(m.lora_B[name].register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


def _is_adapter_name_hook(hook) -> bool:
    return getattr(getattr(hook, "func", None), "__name__", "") == "_adapter_names_pre_forward_hook"


@contextmanager
def _no_leaked_adapter_name_hooks(model, enabled: bool):
    """Remove peft's per-forward ``adapter_names`` hooks if a forward raised.

    peft registers them on every LoRA layer for the duration of one forward and removes them after
    a ``yield`` that is not in a ``try/finally``, so an exception (e.g. Ctrl-C) inside the forward
    would leave them injecting stale ``adapter_names`` into every later forward (training too).
    """
    try:
        yield
    except BaseException:
        for module in model.modules() if enabled else ():
            hooks = getattr(module, "_forward_pre_hooks", None) or {}
            # peft registers functools.partial(_adapter_names_pre_forward_hook, adapter_names=..)
            for hid in [k for k, h in hooks.items() if _is_adapter_name_hook(h)]:
                del hooks[hid]
                getattr(module, "_forward_pre_hooks_with_kwargs", {}).pop(hid, None)
        raise


def response_nll(model, prompt_ids: torch.Tensor, resp: torch.Tensor, lengths: torch.Tensor):
    """Mean per-token NLL of each response given the prompt, one batched forward: (n,)."""
    n, T = resp.shape
    ids = torch.cat([prompt_ids.unsqueeze(0).expand(n, -1), resp], 1)
    keep = torch.arange(T, device=resp.device).unsqueeze(0) < lengths.unsqueeze(1)
    mask = F.pad(keep.long(), (prompt_ids.numel(), 0), value=1)  # the prompt, then the answer
    keep_kw = _forward_kwarg(model, ("logits_to_keep", "num_logits_to_keep"))
    extra = {keep_kw: T + 1} if keep_kw else {}
    logits = model(input_ids=ids, attention_mask=mask, **extra).logits[:, -(T + 1) : -1]
    logp = torch.log_softmax(logits.float(), -1).gather(-1, resp.unsqueeze(-1)).squeeze(-1)
    return -(logp * keep).sum(1) / keep.sum(1).clamp(min=1)


def sequence_nll(model, prompt_ids: torch.Tensor, resp: torch.Tensor, length) -> torch.Tensor:
    """Mean per-token NLL of the whole sequence (prompt and answer up to ``length``): the SFT
    loss over the full sequence, as the paper's pipeline trains."""
    ids = torch.cat([prompt_ids, resp[: int(length)]]).unsqueeze(0)
    logits = model(input_ids=ids).logits[0, :-1]
    return F.cross_entropy(logits.float(), ids[0, 1:])


def decode(tok, resp: torch.Tensor, lengths: torch.Tensor) -> list[str]:
    """The text of each row of ``resp`` up to its length."""
    return [
        tok.decode(ids[: int(k)].tolist(), skip_special_tokens=True)
        for ids, k in zip(resp, lengths, strict=True)
    ]


def rewards(
    reward_model,
    head,
    rm_tok,
    prompt: str,
    texts: list[str],
    device,
    rm_input: str = "prompt+answer",
    max_length: int = 512,
    dropout_seed: int | None = None,
) -> tuple:
    """(r, h) of each text in one batched reward-model forward.

    ``rm_input``: ``answer`` (the text alone) or ``prompt+answer`` (the pair), truncated to
    ``max_length`` tokens. ``dropout_seed``: run the reward model with its dropout on, on the
    global torch RNG seeded with it (restored after); None: dropout off.
    """
    kw = dict(padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    if rm_input == "answer":
        enc = rm_tok(list(texts), **kw)
    else:
        enc = rm_tok([prompt] * len(texts), list(texts), **kw)
    batch = {k: enc[k].to(device) for k in ("input_ids", "attention_mask")}
    if dropout_seed is None:
        with torch.no_grad():
            r, h = head_features(reward_model, head, batch)
        return r.float(), h
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(dropout_seed)
        reward_model.train()
        try:
            r, h = head_features(reward_model, head, batch)
        finally:
            reward_model.eval()
    return r.float(), h


def special_ids(tok, model=None) -> tuple[tuple[int, ...], int]:
    """(end-of-turn ids, padding id): the tokenizer's EOS plus every ``eos_token_id`` of the
    model's generation config and config (Llama-3.2-Instruct: ``<|end_of_text|>``,
    ``<|eom_id|>``, ``<|eot_id|>``); the tokenizer's EOS pads when it has no padding token."""
    ids = [tok.eos_token_id]
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for conf in (getattr(base, "generation_config", None), getattr(base, "config", None)):
        more = getattr(conf, "eos_token_id", None)
        ids += more if isinstance(more, (list, tuple)) else [more]
    vocab = getattr(getattr(base, "config", None), "vocab_size", None) or len(tok)
    eos = tuple(dict.fromkeys(int(i) for i in ids if i is not None and 0 <= int(i) < vocab))
    pad = tok.pad_token_id
    return eos, tok.eos_token_id if pad is None else pad


def _clock(device: str) -> float:
    """``time.perf_counter()`` once the device's queued work is done."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


# --------------------------------------------------------------------------- the protocol
class Protocol:
    """The iterative-RLHF loop on a LoRA policy and a reward model with a trainable head."""

    def __init__(self, cfg: LLMConfig, models: Models, prompts: list[str]):
        self.cfg, self.m, self.prompts = cfg, models, prompts
        self.head = models.rm_head
        self.tok = models.policy_tokenizer
        self.eos_ids, self.pad_id = special_ids(self.tok, models.policy)
        lora_params = [p for p in models.policy.parameters() if p.requires_grad]
        self.policy_opt = torch.optim.AdamW(lora_params, lr=cfg.policy_lr, weight_decay=0.0)
        # AdamW with weight decay 0 is Adam; the head is float32 (models.float32_head), so are
        # its optimiser states
        self.rm_opt = torch.optim.AdamW(
            self.head.parameters(), lr=cfg.rm_lr, weight_decay=cfg.rm_weight_decay
        )
        self.generator = torch.Generator(device=cfg.device)
        # Reference + candidates in one mixed-adapter token loop when the policy allows it; False
        # forces the two loops (base, then policy) of earlier versions (see ``generate_step``).
        self.mixed_generation = True
        self.mixing = MIXING  # "row-mask" or "peft" (falls back to "peft" where no row mask)
        self._decoders: dict[tuple, StaticDecoder] = {}  # by (positions, compile mode)
        self.oracle_queries = 0
        self.step_count = 0  # protocol steps done

    # ---------------------------------------------------------------- pieces
    def step_seed(self, t: int) -> int:
        return (self.cfg.seed * 1_000_003 + t * 7_919) % (2**63 - 1)

    def prompt_index(self, t: int) -> int:
        n = len(self.prompts)
        if self.cfg.prompt_order == "in-order":
            return t % n
        perm = np.random.default_rng([self.cfg.seed, t // n]).permutation(n)
        return int(perm[t % n])

    def prompt_ids(self, prompt: str) -> torch.Tensor:
        cfg = self.cfg
        return encode_prompt(self.tok, prompt, cfg.max_prompt_tokens, cfg.device, cfg.chat_date)

    def _mixing(self) -> tuple[str, str] | None:
        """(adapter, ``row-mask`` or ``peft``) of the one-loop generation, None for two loops."""
        name = mixed_batch_adapter(self.m.policy) if self.mixed_generation else None
        if name is None:
            return None
        row_mask_possible = row_mask_ok(self.m.policy, name)
        if self.cfg.compile_decode != "off":  # the compiled step mixes by its own row mask only
            return (name, "row-mask") if row_mask_possible else None
        row_mask = self.mixing == "row-mask" and row_mask_possible
        return name, "row-mask" if row_mask else "peft"

    @property
    def generation_mode(self) -> str:
        """``one-loop/row-mask``, ``one-loop/peft`` (reference + candidates in one batch) or
        ``two-loop`` (reference, then candidates)."""
        mix = self._mixing()
        return "two-loop" if mix is None else f"one-loop/{mix[1]}"

    def decoder(self) -> StaticDecoder | None:
        """The policy's static-cache decoder (``static_cache``, ``compile_decode``), kept across
        steps (one cache per batch size, one compiled step); None: the growing cache."""
        cfg = self.cfg
        if not cfg.static_cache:
            return None
        key = (cfg.max_prompt_tokens + cfg.max_new_tokens, cfg.compile_decode)
        if key not in self._decoders:
            self._decoders[key] = StaticDecoder(self.m.policy, *key)
        return self._decoders[key]

    def generate_step(
        self, prompt_ids: torch.Tensor, *, greedy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The candidates (rows 0..n-1, policy) and the reference (row n, base model): (ids, lengths).

        One token loop over n + 1 rows when the policy can mix (``mixed_batch_adapter``), with the
        ``self.mixing`` backend (``row-mask`` falls back to ``peft`` where ``row_mask_ok`` fails),
        else the reference's loop then the candidates' loop. The two modes draw from
        ``self.generator`` in a different order (see the module docstring).
        """
        cfg, policy, n = self.cfg, self.m.policy, self.cfg.candidates
        mix = self._mixing()
        kw = dict(
            max_new=cfg.max_new_tokens,
            min_new=cfg.min_new_tokens,
            eos_id=self.eos_ids,
            pad_id=self.pad_id,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            generator=self.generator,
            greedy=greedy,
            top_p_topk=cfg.top_p_topk,
            decoder=self.decoder(),
        )
        policy.eval()  # peft refuses adapter_names in training mode; no LoRA dropout
        if mix is None:
            with policy.disable_adapter():
                ref = sample(policy, prompt_ids, 1, **kw)
            parts = [sample(policy, prompt_ids, n, **kw), ref]  # right-pad to one width
            width = max(ids.shape[1] for ids, _ in parts)
            pad = [F.pad(ids, (0, width - ids.shape[1]), value=self.pad_id) for ids, _ in parts]
            return torch.cat(pad), torch.cat([lens for _, lens in parts])
        names = [mix[0]] * n + [BASE_ADAPTER]
        return sample(policy, prompt_ids, n + 1, adapter_names=names, mixing=mix[1], **kw)

    @torch.no_grad()
    def utility(self, prompt_ids: torch.Tensor, resp: torch.Tensor, lengths: torch.Tensor):
        """Oracle utility (uncounted here; the caller counts queries): base model, adapter off."""
        self.m.policy.eval()
        with self.m.policy.disable_adapter():
            nll = response_nll(self.m.policy, prompt_ids, resp, lengths)
        return (-nll + self.cfg.utility_offset).clamp(*self.cfg.utility_clip)

    def rewards(
        self, prompt: str, texts: list[str], dropout_seed: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(r, h) of each text in one batched reward-model forward (``rm_input``, ``rm_max_tokens``;
        dropout on, seeded, when ``dropout_seed`` is given)."""
        m, cfg = self.m, self.cfg
        return rewards(
            m.reward_model,
            self.head,
            m.rm_tokenizer,
            prompt,
            texts,
            cfg.device,
            cfg.rm_input,
            cfg.rm_max_tokens,
            dropout_seed,
        )

    def scoring_dropout_seed(self, t: int) -> int | None:
        """The seed of the RM's dropout when this agent's candidates are scored with it on (the
        paper's asymmetry, ``rm_dropout_asymmetry``: naive-like agents only), else None."""
        on = self.cfg.rm_dropout_asymmetry and self.cfg.penalty_form in ("none", "random")
        return self.step_seed(t) + 2 if on else None

    # ---------------------------------------------------------------- scoring
    def score(
        self, prompt: str, prompt_ids, resp, lengths, texts, batched: bool = True, t: int = 0
    ) -> dict:
        """U, r, h, penalty and FPO score of candidates (rows 0..n-1) and reference (row n)."""
        cfg = self.cfg
        drop = self.scoring_dropout_seed(t)
        if batched:
            u = self.utility(prompt_ids, resp, lengths)
            r, h = self.rewards(prompt, texts, drop)
        else:  # one candidate at a time, autograd for the head gradient (the slow reference)
            rows = zip(resp.split(1), lengths.split(1), strict=True)
            u = torch.cat([self.utility(prompt_ids, x, k) for x, k in rows])
            rh = [self.rewards(prompt, [tx], drop) for tx in texts]
            r, h = (torch.cat(x) for x in zip(*rh, strict=True))
        n = resp.shape[0] - 1
        form = cfg.penalty_form  # the agent class's llm_penalty (agents.registry)
        if form == "random":  # the random-winner control: the score does not choose
            form = "none"
        if batched or form == "none":
            score, pen = fpo_scores(form, cfg.gamma, r[:n], h[:n], r[n], h[n], u[:n], u[n])
        else:
            pen = autograd_penalty(form, self.head, h[:n], h[n], u[:n], u[n])
            score = r[:n] - cfg.gamma * pen
        return {"u": u, "r": r, "h": h, "penalty": pen, "score": score}

    # ---------------------------------------------------------------- updates
    def rm_step(self, t: int, h_w: torch.Tensor, h_ref: torch.Tensor, u_w, u_ref) -> float:
        """Bradley-Terry loss of the head on (winner vs reference), soft label sigmoid(U_w - U_ref),
        accumulated over ``rm_grad_accum`` steps before an AdamW step (every step when 1).

        The loss sees only r_w - r_ref, so the head's bias gets no gradient (as in the penalty,
        where the bias terms cancel); only the weight moves (and, with weight decay, the bias
        decays). The head and its optimiser states are float32 (``models.float32_head``).
        """
        logit = (self.head(h_w.unsqueeze(0)) - self.head(h_ref.unsqueeze(0))).squeeze().float()
        label = torch.sigmoid(u_w - u_ref).float()
        loss = F.binary_cross_entropy_with_logits(logit, label)
        (loss / self.cfg.rm_grad_accum).backward()
        self.rm_optimizer_step(t)
        return loss.item()

    def rm_optimizer_step(self, t: int) -> None:
        """The head's AdamW step at the end of each ``rm_grad_accum`` window of protocol steps."""
        if (t + 1) % self.cfg.rm_grad_accum == 0:
            self.rm_opt.step()
            self.rm_opt.zero_grad(set_to_none=True)

    def sft_step(self, t: int, prompt_ids, resp_w, len_w) -> float:
        """SFT on the winner (mean token NLL), with gradient accumulation; the dropout runs on the
        global torch RNG seeded from (seed, step), restored after."""
        self.m.policy.train()
        dev = torch.device(self.cfg.device)
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(self.step_seed(t) + 1)
            if self.cfg.sft_on == "sequence":
                loss = sequence_nll(self.m.policy, prompt_ids, resp_w, len_w)
            else:
                loss = response_nll(self.m.policy, prompt_ids, resp_w.unsqueeze(0), len_w.view(1))
                loss = loss[0]
            (loss / self.cfg.grad_accum).backward()
        self.policy_optimizer_step(t)
        self.m.policy.eval()
        return loss.item()

    def policy_optimizer_step(self, t: int) -> None:
        if (t + 1) % self.cfg.grad_accum == 0:
            self.policy_opt.step()
            self.policy_opt.zero_grad(set_to_none=True)

    # ---------------------------------------------------------------- one step
    def pick_winner(self, t: int, score: torch.Tensor, texts: list[str]) -> int | None:
        """The winner's row: the best score among the eligible candidates (non-empty ones when
        ``skip_empty``), or a seeded uniform pick among them for the random-winner control;
        None when no candidate is eligible."""
        n = self.cfg.candidates
        ok = [not (self.cfg.skip_empty and not texts[i].strip()) for i in range(n)]
        if not any(ok):
            return None
        if self.cfg.penalty_form == "random":
            eligible = [i for i in range(n) if ok[i]]
            pick = np.random.default_rng([self.cfg.seed, t, 0x5A]).integers(len(eligible))
            return eligible[int(pick)]
        masked = score.masked_fill(~torch.tensor(ok, device=score.device), float("-inf"))
        return int(torch.argmax(masked))

    def oracle_cost(self, texts: list[str], winner: int | None) -> int:
        """Oracle queries of a step, by one rule for every agent: one query is the oracle's
        utility of one response that the agent's choices or updates read. The label of the RM
        step reads U(winner) and U(reference): 2; relaxed FPO also reads U of every eligible
        candidate to score it (the winner is one of them): eligible + 1. A step without an
        eligible candidate reads nothing."""
        if winner is None:
            return 0
        if self.cfg.penalty_form != "relaxed":
            return 2
        n = self.cfg.candidates
        return sum(not (self.cfg.skip_empty and not x.strip()) for x in texts[:n]) + 1

    def step(self, t: int, batched: bool = True) -> dict:
        cfg, dev = self.cfg, self.cfg.device
        self.generator.manual_seed(self.step_seed(t))
        p_idx = self.prompt_index(t)
        prompt = self.prompts[p_idx]
        prompt_ids = self.prompt_ids(prompt)

        t0 = _clock(dev)
        resp, lengths = self.generate_step(prompt_ids)
        texts = decode(self.tok, resp, lengths)
        t1 = _clock(dev)

        s = self.score(prompt, prompt_ids, resp, lengths, texts, batched=batched, t=t)
        n = cfg.candidates
        w = self.pick_winner(t, s["score"], texts)
        t2 = _clock(dev)

        u, r, h = s["u"], s["r"], s["h"]
        skipped = w is None
        if skipped:  # nothing to learn from: no update, but the accumulation windows still end
            w, rm_loss, sft_loss = 0, float("nan"), float("nan")
            self.rm_optimizer_step(t)
            self.policy_optimizer_step(t)
        else:
            h_w, h_ref = h[w], h[n]
            if cfg.rm_dropout_asymmetry:  # the paper's RM update: features with dropout on
                _, h_pair = self.rewards(prompt, [texts[w], texts[n]], self.step_seed(t) + 3)
                h_w, h_ref = h_pair[0], h_pair[1]
            rm_loss = self.rm_step(t, h_w, h_ref, u[w], u[n])
            sft_loss = self.sft_step(t, prompt_ids, resp[w], lengths[w])
        t3 = _clock(dev)

        self.oracle_queries += self.oracle_cost(texts, None if skipped else w)
        self.step_count = t + 1
        return {
            "step": t,
            "prompt_idx": p_idx,
            "skipped": int(skipped),
            "proxy_winner": float(r[w]),
            "utility_winner": float(u[w]),
            "proxy_ref": float(r[n]),
            "utility_ref": float(u[n]),
            "penalty_winner": float(s["penalty"][w]),
            "score_winner": float(s["score"][w]),
            "proxy_mean": float(r[:n].mean()),
            "utility_mean": float(u[:n].mean()),
            "overconfidence": float(torch.sigmoid(r[w] - r[n]) - torch.sigmoid(u[w] - u[n])),
            "winner_tokens": int(lengths[w]),
            "winner_words": len(texts[w].split()),
            "empty_candidates": sum(not x.strip() for x in texts[:n]),
            "rm_loss": rm_loss,
            "sft_loss": sft_loss,
            "oracle_queries": self.oracle_queries,
            "gen_s": t1 - t0,
            "score_s": t2 - t1,
            "update_s": t3 - t2,
            "step_s": t3 - t0,
        }

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, folder: str, meta: dict | None = None) -> None:
        """Adapter (``save_pretrained``), head, optimisers, pending grads, RNG states, step.

        ``meta`` (JSON) goes to ``meta.json`` in the same folder (``llm_track.run`` records there
        the run's settings and a digest of the metrics rows the checkpoint belongs to). Written to
        ``folder + '.tmp'`` and swapped in, so a crash never leaves half a checkpoint.
        """
        tmp, old = folder + ".tmp", folder + ".old"
        for path in (tmp, old):
            shutil.rmtree(path, ignore_errors=True)
        os.makedirs(tmp)
        self.m.policy.save_pretrained(os.path.join(tmp, "adapter"))
        lora = {n: p for n, p in self.m.policy.named_parameters() if p.requires_grad}
        name, keys, pos, has_gauss, cached = np.random.get_state()  # keys as a tensor: weights_only
        np_rest = (int(pos), int(has_gauss), float(cached))
        state = {
            "step": self.step_count,
            "oracle_queries": self.oracle_queries,
            "lora": {n: p.detach().cpu().clone() for n, p in lora.items()},
            "lora_grad": {
                n: p.grad.detach().cpu().clone() for n, p in lora.items() if p.grad is not None
            },
            "rm_head": {k: v.cpu().clone() for k, v in self.head.state_dict().items()},
            "rm_head_grad": {
                n: p.grad.detach().cpu().clone()
                for n, p in self.head.named_parameters()
                if p.grad is not None
            },
            "policy_opt": self.policy_opt.state_dict(),
            "rm_opt": self.rm_opt.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "generator": self.generator.get_state(),
                "python": random.getstate(),
                "numpy": (name, torch.from_numpy(keys.astype(np.int64)), *np_rest),
            },
        }
        torch.save(state, os.path.join(tmp, "state.pt"))
        torch.save(state["rm_head"], os.path.join(tmp, "rm_head.pt"))
        if meta is not None:
            with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=2, sort_keys=True, default=str)
                f.write("\n")
        if os.path.exists(folder):
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self, folder: str) -> int:
        """Restore a checkpoint written by ``save_checkpoint``; returns the step to continue at."""
        # weights_only: tensors and plain containers only, no arbitrary unpickling
        state = torch.load(os.path.join(folder, "state.pt"), map_location="cpu", weights_only=True)
        params = dict(self.m.policy.named_parameters())
        with torch.no_grad():
            for n, v in state["lora"].items():
                params[n].copy_(v)
                params[n].grad = None
            for n, g in state["lora_grad"].items():
                params[n].grad = g.to(params[n].device)
        self.head.load_state_dict(state["rm_head"])
        head_params = dict(self.head.named_parameters())
        for n, p in head_params.items():
            g = state.get("rm_head_grad", {}).get(n)
            p.grad = None if g is None else g.to(p.device, p.dtype)
        self.policy_opt.load_state_dict(state["policy_opt"])
        self.rm_opt.load_state_dict(state["rm_opt"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        self.generator.set_state(rng["generator"])
        random.setstate(rng["python"])
        name, keys, *np_rest = rng["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), *np_rest))
        self.oracle_queries = state["oracle_queries"]
        self.step_count = state["step"]
        return self.step_count
