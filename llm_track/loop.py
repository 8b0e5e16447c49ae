"""One step of the paper's LLM protocol (arXiv 2605.04266, section 4), top to bottom.

Per step: pick a prompt; the base model (policy with its LoRA adapter disabled) samples a reference
answer and the policy samples n candidates (KV cache, top-p, temperature, min/max new tokens), in
one token loop over n + 1 rows whose reference row runs without the LoRA update (peft's
mixed-adapter batch semantics; two loops, base then policy, when the policy cannot mix: see
``Protocol.generate_step``); candidates + reference are scored in one batched forward of the base
model (oracle utility U = clip(-NLL per token + 5, -15, 5)) and one of the reward model (reward r
and head features h); each candidate's score is r minus gamma times the FPO penalty (closed form,
see ``fpo_head``); the best candidate wins; the RM head takes a Bradley-Terry step on (winner vs
reference) with soft label sigmoid(U_w - U_ref); the policy takes an SFT step on the winner.

Randomness is explicit: sampling uses a ``torch.Generator`` seeded from (seed, step) and the
dropout of the SFT step runs under a forked global RNG seeded the same way, so a step's outcome
depends only on the seed, the step index and the model/optimiser state (which checkpoints hold).
In the one-loop generation each token step draws once for all n + 1 rows (candidates, then the
reference); the two-loop generation drew the reference's whole answer first, then the candidates'.
Both give each row an exact sample of its own model, independent across rows, but the same seed
gives different answers in the two modes (runs made before the one-loop generation are not
reproduced bit for bit; same seed, same mode, same output still holds).
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

from llm_track.config import LLMConfig
from llm_track.fpo_head import autograd_penalty, fpo_scores, head_features
from llm_track.models import Models


# --------------------------------------------------------------------------- helpers
def encode_prompt(tok, prompt: str, max_tokens: int, device) -> torch.Tensor:
    """Token ids of a prompt in the policy's format (chat template when the tokenizer has one)."""
    if getattr(tok, "chat_template", None):
        text = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        ids = tok(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tok(f"question : {prompt} answer :", add_special_tokens=False)["input_ids"]
        if tok.bos_token_id is not None:
            ids = [tok.bos_token_id] + ids
    return torch.tensor(ids[-max_tokens:], dtype=torch.long, device=device)


def _top_p_probs(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    probs = torch.softmax(logits, dim=-1)
    if top_p >= 1.0:
        return probs
    sorted_p, idx = probs.sort(dim=-1, descending=True)
    drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest set with mass >= top_p
    sorted_p = sorted_p.masked_fill(drop, 0.0)
    out = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    return out / out.sum(-1, keepdim=True)


def _forward_kwarg(model, names: tuple[str, ...]) -> str | None:
    """The first of ``names`` that the (base) model's forward accepts (versions differ)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return next((n for n in names if n in params), None)


@torch.no_grad()
def sample(
    model,
    prompt_ids: torch.Tensor,
    n: int,
    *,
    max_new: int,
    min_new: int,
    eos_id: int,
    pad_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    greedy: bool = False,
    adapter_names: list[str] | None = None,
    mixing: str = "row-mask",
) -> tuple[torch.Tensor, torch.Tensor]:
    """n answers to one prompt with a KV cache: (ids (n, T) right-padded, lengths (n,)).

    Lengths count the EOS token when one was produced; EOS is masked before ``min_new`` tokens.
    ``adapter_names`` (one per row, peft LoRA models in eval mode): row i runs through adapter
    ``adapter_names[i]`` or, for ``"__base__"``, the base model, by ``mixing``: ``"peft"`` (peft's
    mixed-adapter batch forward; needs ``mixed_batch_adapter``) or ``"row-mask"``
    (``_row_masked_lora``; needs ``row_mask_ok``). All rows share the prompt, so no padding or
    attention mask. Each token step draws once from ``generator`` for all n rows (row-major).
    """
    ids, dev = prompt_ids.unsqueeze(0).expand(n, -1).contiguous(), prompt_ids.device
    # the KV-cache argument/output: ``cache`` (transformers 5) or ``past_key_values``
    cache_kw = _forward_kwarg(model, ("cache",)) or "past_key_values"
    extra, hooks = {}, nullcontext()
    if adapter_names is not None:
        if len(adapter_names) != n:
            raise ValueError(f"adapter_names has {len(adapter_names)} entries for {n} rows")
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
    with _no_leaked_adapter_name_hooks(model, enabled=mixing == "peft"), hooks:
        done = torch.zeros(n, dtype=torch.bool, device=dev)
        lengths = torch.full((n,), max_new, dtype=torch.long, device=dev)
        tokens, cache = [], None
        for t in range(max_new):  # the first forward runs the prompt, the others one token
            out = model(input_ids=ids, use_cache=True, **{cache_kw: cache}, **extra)
            cache, logits = getattr(out, cache_kw), out.logits[:, -1].float()
            if t < min_new:
                logits[:, eos_id] = float("-inf")
            if greedy:
                nxt = logits.argmax(-1)
            else:
                probs = _top_p_probs(logits / temperature, top_p)
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
            tokens.append(nxt)
            ended = ~done & (nxt == eos_id)
            lengths[ended] = t + 1
            done |= ended
            if bool(done.all()):
                break
            ids = nxt.unsqueeze(1)
    return torch.stack(tokens, 1), lengths


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


def decode(tok, resp: torch.Tensor, lengths: torch.Tensor) -> list[str]:
    """The text of each row of ``resp`` up to its length."""
    return [
        tok.decode(ids[: int(k)].tolist(), skip_special_tokens=True)
        for ids, k in zip(resp, lengths, strict=True)
    ]


def rewards(reward_model, head, rm_tok, prompt: str, texts: list[str], device) -> tuple:
    """(r, h) of each (prompt, text) pair in one batched reward-model forward."""
    kw = dict(padding=True, truncation=True, max_length=512, return_tensors="pt")
    enc = rm_tok([prompt] * len(texts), texts, **kw)
    batch = {k: enc[k].to(device) for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        r, h = head_features(reward_model, head, batch)
    return r.float(), h


def special_ids(tok) -> tuple[int, int]:
    """(EOS id, padding id) of a tokenizer; EOS pads when it has no padding token."""
    pad = tok.pad_token_id
    return tok.eos_token_id, tok.eos_token_id if pad is None else pad


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
        self.eos_id, self.pad_id = special_ids(self.tok)
        lora_params = [p for p in models.policy.parameters() if p.requires_grad]
        self.policy_opt = torch.optim.AdamW(lora_params, lr=cfg.policy_lr, weight_decay=0.0)
        self.rm_opt = torch.optim.Adam(self.head.parameters(), lr=cfg.rm_lr)
        self.generator = torch.Generator(device=cfg.device)
        # Reference + candidates in one mixed-adapter token loop when the policy allows it; False
        # forces the two loops (base, then policy) of earlier versions (see ``generate_step``).
        self.mixed_generation = True
        self.mixing = MIXING  # "row-mask" or "peft" (falls back to "peft" where no row mask)
        self.oracle_queries = 0
        self.step_count = 0  # protocol steps done

    # ---------------------------------------------------------------- pieces
    def step_seed(self, t: int) -> int:
        return (self.cfg.seed * 1_000_003 + t * 7_919) % (2**63 - 1)

    def prompt_index(self, t: int) -> int:
        n = len(self.prompts)
        perm = np.random.default_rng([self.cfg.seed, t // n]).permutation(n)
        return int(perm[t % n])

    def prompt_ids(self, prompt: str) -> torch.Tensor:
        return encode_prompt(self.tok, prompt, self.cfg.max_prompt_tokens, self.cfg.device)

    def _mixing(self) -> tuple[str, str] | None:
        """(adapter, ``row-mask`` or ``peft``) of the one-loop generation, None for two loops."""
        name = mixed_batch_adapter(self.m.policy) if self.mixed_generation else None
        if name is None:
            return None
        row_mask = self.mixing == "row-mask" and row_mask_ok(self.m.policy, name)
        return name, "row-mask" if row_mask else "peft"

    @property
    def generation_mode(self) -> str:
        """``one-loop/row-mask``, ``one-loop/peft`` (reference + candidates in one batch) or
        ``two-loop`` (reference, then candidates)."""
        mix = self._mixing()
        return "two-loop" if mix is None else f"one-loop/{mix[1]}"

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
            eos_id=self.eos_id,
            pad_id=self.pad_id,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            generator=self.generator,
            greedy=greedy,
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

    def rewards(self, prompt: str, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(r, h) of each text in one batched reward-model forward."""
        m = self.m
        return rewards(m.reward_model, self.head, m.rm_tokenizer, prompt, texts, self.cfg.device)

    # ---------------------------------------------------------------- scoring
    def score(self, prompt: str, prompt_ids, resp, lengths, texts, batched: bool = True) -> dict:
        """U, r, h, penalty and FPO score of candidates (rows 0..n-1) and reference (row n)."""
        cfg = self.cfg
        if batched:
            u = self.utility(prompt_ids, resp, lengths)
            r, h = self.rewards(prompt, texts)
        else:  # one candidate at a time, autograd for the head gradient (the slow reference)
            rows = zip(resp.split(1), lengths.split(1), strict=True)
            u = torch.cat([self.utility(prompt_ids, x, k) for x, k in rows])
            rh = [self.rewards(prompt, [tx]) for tx in texts]
            r, h = (torch.cat(x) for x in zip(*rh, strict=True))
        n = resp.shape[0] - 1
        form = cfg.penalty_form  # the agent class's llm_penalty (agents.registry)
        if batched or form == "none":
            score, pen = fpo_scores(form, cfg.gamma, r[:n], h[:n], r[n], h[n], u[:n], u[n])
        else:
            pen = autograd_penalty(form, self.head, h[:n], h[n], u[:n], u[n])
            score = r[:n] - cfg.gamma * pen
        return {"u": u, "r": r, "h": h, "penalty": pen, "score": score}

    # ---------------------------------------------------------------- updates
    def rm_step(self, h_w: torch.Tensor, h_ref: torch.Tensor, u_w, u_ref) -> float:
        """Bradley-Terry step of the head on (winner vs reference), soft label sigmoid(U_w - U_ref).

        The loss sees only r_w - r_ref, so the head's bias gets no gradient (as in the penalty,
        where the bias terms cancel); only the weight moves.
        """
        self.rm_opt.zero_grad(set_to_none=True)
        logit = (self.head(h_w.unsqueeze(0)) - self.head(h_ref.unsqueeze(0))).squeeze().float()
        label = torch.sigmoid(u_w - u_ref).float()
        loss = F.binary_cross_entropy_with_logits(logit, label)
        loss.backward()
        self.rm_opt.step()
        return loss.item()

    def sft_step(self, t: int, prompt_ids, resp_w, len_w) -> float:
        """SFT on the winner (mean token NLL), with gradient accumulation; the dropout runs on the
        global torch RNG seeded from (seed, step), restored after."""
        self.m.policy.train()
        dev = torch.device(self.cfg.device)
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(self.step_seed(t) + 1)
            loss = response_nll(self.m.policy, prompt_ids, resp_w.unsqueeze(0), len_w.view(1))[0]
            (loss / self.cfg.grad_accum).backward()
        if (t + 1) % self.cfg.grad_accum == 0:
            self.policy_opt.step()
            self.policy_opt.zero_grad(set_to_none=True)
        self.m.policy.eval()
        return loss.item()

    # ---------------------------------------------------------------- one step
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

        s = self.score(prompt, prompt_ids, resp, lengths, texts, batched=batched)
        n = cfg.candidates
        w = int(torch.argmax(s["score"]))
        t2 = _clock(dev)

        u, r, h = s["u"], s["r"], s["h"]
        rm_loss = self.rm_step(h[w], h[n], u[w], u[n])
        sft_loss = self.sft_step(t, prompt_ids, resp[w], lengths[w])
        t3 = _clock(dev)

        self.oracle_queries += 1 + (n if cfg.penalty_form == "relaxed" else 0)
        self.step_count = t + 1
        return {
            "step": t,
            "prompt_idx": p_idx,
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
