"""Prompt encoding and the sampling kernel (``sample``) of the LLM track; which model a row runs
through (base or adapter) is the caller's affair (``adapters``)."""

from __future__ import annotations

import inspect

import torch

from llm_track.config import LLMTrackError


# --------------------------------------------------------------------------- prompts and ids
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
    """Token ids of a prompt in the policy's format, at most ``max_tokens`` long: a prompt that
    does not fit loses the end of the user's text, never the template."""
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


def decode(tok, resp: torch.Tensor, lengths: torch.Tensor) -> list[str]:
    """The text of each row of ``resp`` up to its length."""
    return [
        tok.decode(ids[: int(k)].tolist(), skip_special_tokens=True)
        for ids, k in zip(resp, lengths, strict=True)
    ]


def forward_kwarg(model, names: tuple[str, ...]) -> str | None:
    """The first of ``names`` that the (base) model's forward accepts (versions differ)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return next((n for n in names if n in params), None)


# --------------------------------------------------------------------------- sampling
def top_p_probs(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Softmax of ``logits`` filtered to the nucleus of mass ``top_p`` (the smallest set of most
    likely tokens whose mass reaches ``top_p``, by a full sort of each row) and renormalised."""
    probs = torch.softmax(logits, dim=-1)
    if top_p >= 1.0:
        return probs
    sorted_p, idx = probs.sort(dim=-1, descending=True)
    drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest set with mass >= top_p
    sorted_p = sorted_p.masked_fill(drop, 0.0)
    out = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    return out / out.sum(-1, keepdim=True)


def prefill(model, prompt_ids: torch.Tensor, rows: int, index: torch.Tensor):
    """The prompt run once in each of ``rows`` rows (e.g. adapter and base, under a row mask),
    then its KV cache and last logits gathered to the rows ``index`` picks: (cache, logits)."""
    cache_kw = forward_kwarg(model, ("cache",)) or "past_key_values"
    keep_kw = forward_kwarg(model, ("logits_to_keep", "num_logits_to_keep"))
    extra = {keep_kw: 1} if keep_kw else {}  # the last position's logits only
    out = model(input_ids=prompt_ids.unsqueeze(0).expand(rows, -1), use_cache=True, **extra)
    cache = getattr(out, cache_kw)
    cache.reorder_cache(index)
    return cache, out.logits[index, -1]


def draw(logits: torch.Tensor, top_p: float, generator=None, k: int = 64) -> torch.Tensor:
    """One token per row from :func:`top_p_probs` of ``logits``; when the ``k`` most likely tokens
    hold mass >= ``top_p`` in every row (so the nucleus is among them), computed on those ``k``
    only: the same distribution, without sorting a 49k-token vocabulary per step."""
    if top_p < 1.0 and logits.shape[-1] > k:
        idx = logits.topk(k, -1).indices
        mass = torch.softmax(logits, -1).gather(-1, idx)
        if bool((mass.sum(-1) >= top_p).all()):  # (topk sorts: drop as in top_p_probs)
            kept = mass.masked_fill(mass.cumsum(-1) - mass > top_p, 0.0)
            pick = torch.multinomial(kept, 1, generator=generator)
            return idx.gather(-1, pick).squeeze(1)
    return torch.multinomial(top_p_probs(logits, top_p), 1, generator=generator).squeeze(1)


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
    start: tuple | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """n answers to one prompt, KV-cached: (ids (n, T) right-padded, lengths (n,)). Any ``eos_id``
    ends a row (its length counts it) and is masked before ``min_new`` tokens. The prompt runs
    once (``start``: a :func:`prefill` of the caller's); each token step: one row-major
    ``generator`` draw."""
    dev = prompt_ids.device
    eos = torch.tensor(eos_id if isinstance(eos_id, (tuple, list)) else [eos_id], device=dev)
    # the KV-cache argument/output: ``cache`` (transformers 5) or ``past_key_values``
    cache_kw = forward_kwarg(model, ("cache",)) or "past_key_values"
    done = torch.zeros(n, dtype=torch.bool, device=dev)
    lengths = torch.full((n,), max_new, dtype=torch.long, device=dev)
    cache, logits = start or prefill(model, prompt_ids, 1, torch.zeros(n, dtype=torch.long))
    tokens = []
    for t in range(max_new):
        logits = logits.float().clone()
        if t < min_new:
            logits[:, eos] = float("-inf")
        if greedy:
            nxt = logits.argmax(-1)
        else:
            nxt = draw(logits / temperature, top_p, generator)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        tokens.append(nxt)
        ended = ~done & torch.isin(nxt, eos)
        lengths = torch.where(ended, t + 1, lengths)
        done |= ended
        if bool(done.all()) or t + 1 == max_new:
            break
        out = model(input_ids=nxt.unsqueeze(1), use_cache=True, **{cache_kw: cache})
        cache, logits = getattr(out, cache_kw), out.logits[:, -1]
    return torch.stack(tokens, 1), lengths
