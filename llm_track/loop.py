"""One step of the paper's LLM protocol (arXiv 2605.04266, section 4): ``Protocol.step``,
described step by step in ``llm_track/README.md``, "One step"; its seeding in "Files of a run"."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from baselines.results import atomic_write_json
from llm_track.adapters import mixable_adapter, row_masked_lora
from llm_track.config import LLMConfig
from llm_track.decoding import decode, encode_prompt, forward_kwarg, prefill, sample, special_ids
from llm_track.export import written_whole
from llm_track.fpo_head import fpo_scores, head_features
from llm_track.models import Models


# --------------------------------------------------------------------------- scoring kernels
def response_nll(model, prompt_ids: torch.Tensor, resp: torch.Tensor, lengths: torch.Tensor):
    """Mean per-token NLL of each response given the prompt (run once, ``decoding.prefill``): (n,)."""
    n, T = resp.shape
    keep = torch.arange(T, device=resp.device).unsqueeze(0) < lengths.unsqueeze(1)
    cache, first = prefill(model, prompt_ids, 1, torch.zeros(n, dtype=torch.long))
    logits = first.unsqueeze(1)
    if T > 1:
        mask = F.pad(keep[:, :-1].long(), (prompt_ids.numel(), 0), value=1)
        cache_kw = forward_kwarg(model, ("cache",)) or "past_key_values"
        rest = model(input_ids=resp[:, :-1], attention_mask=mask, **{cache_kw: cache}).logits
        logits = torch.cat([logits, rest], 1)
    logp = torch.log_softmax(logits.float(), -1).gather(-1, resp.unsqueeze(-1)).squeeze(-1)
    return -(logp * keep).sum(1) / keep.sum(1).clamp(min=1)


@torch.no_grad()
def utility(model, cfg: LLMConfig, prompt_ids, resp, lengths) -> torch.Tensor:
    """U of each response: clip(-NLL per token under ``model`` + ``cfg.utility_offset``)."""
    return utility_of(response_nll(model, prompt_ids, resp, lengths), cfg)


def utility_of(nll: torch.Tensor, cfg: LLMConfig) -> torch.Tensor:
    """:func:`utility` from the per-token NLL, in ``nll``'s dtype (the protocol's float32; the
    evaluation passes float64)."""
    return (-nll + cfg.utility_offset).clamp(*cfg.utility_clip)


@contextmanager
def _seeded_rng(device: str, seed: int):
    """The global torch RNG (and the device's, on CUDA) forked for a block, seeded with ``seed``."""
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def sequence_nll(model, prompt_ids: torch.Tensor, resp: torch.Tensor, length) -> torch.Tensor:
    """Mean per-token NLL of prompt + answer (to ``length``): the paper's full-sequence SFT loss."""
    ids = torch.cat([prompt_ids, resp[: int(length)]]).unsqueeze(0)
    logits = model(input_ids=ids).logits[0, :-1]
    return F.cross_entropy(logits.float(), ids[0, 1:])


def rewards(
    reward_model, head, rm_tok, cfg: LLMConfig, prompt: str, texts: list[str], dropout_seed=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(r, h) of each text, one batched RM forward on ``cfg.device`` reading ``cfg.rm_input``
    (``answer``: the text alone; ``prompt+answer``: the pair) cut to ``cfg.rm_max_tokens`` tokens.
    ``dropout_seed``: dropout on, the global torch RNG seeded with it (restored after); None: off."""
    kw = dict(padding=True, truncation=True, max_length=cfg.rm_max_tokens, return_tensors="pt")
    pair = [] if cfg.rm_input == "answer" else [[prompt] * len(texts)]
    enc = rm_tok(*pair, list(texts), **kw)
    batch = {k: enc[k].to(cfg.device) for k in ("input_ids", "attention_mask")}
    on = dropout_seed is not None
    with _seeded_rng(cfg.device, dropout_seed) if on else nullcontext(), torch.no_grad():
        if on:
            reward_model.train()
        try:
            r, h = head_features(reward_model, head, batch)
        finally:
            reward_model.eval()
    return r.float(), h


def _optimizer_step(opt: torch.optim.Optimizer, accum: int, t: int) -> None:
    """The optimiser's step at the end of each window of ``accum`` protocol steps."""
    if (t + 1) % accum == 0:
        opt.step()
        opt.zero_grad(set_to_none=True)


def _grads(params: dict) -> dict:
    return {n: p.grad.detach().cpu().clone() for n, p in params.items() if p.grad is not None}


def _set_grads(params: dict, grads: dict) -> None:
    for n, p in params.items():
        p.grad = grads[n].to(p.device, p.dtype) if n in grads else None


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
        # weight decay 0: Adam; the head and its optimiser states are float32 (freeze_all_but_head)
        self.rm_opt = torch.optim.AdamW(
            self.head.parameters(), lr=cfg.rm_lr, weight_decay=cfg.rm_weight_decay
        )
        self.generator = torch.Generator(device=cfg.device)
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

    @property
    def generation_mode(self) -> str:
        """``one-loop`` (reference + candidates in one batch, ``adapters.row_masked_lora``) or
        ``two-loop`` (reference, then candidates)."""
        return "two-loop" if mixable_adapter(self.m.policy) is None else "one-loop"

    def generate_step(
        self, prompt_ids: torch.Tensor, *, greedy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The candidates (rows 0..n-1, policy) and the reference (row n, base model): (ids,
        lengths), in one token loop (``generation_mode``) or two."""
        policy, n, cfg = self.m.policy, self.cfg.candidates, self.cfg
        kw = dict(max_new=cfg.max_new_tokens, min_new=cfg.min_new_tokens, eos_id=self.eos_ids)
        kw.update(pad_id=self.pad_id, temperature=cfg.temperature, top_p=cfg.top_p)
        kw.update(generator=self.generator, greedy=greedy)
        policy.eval()  # no LoRA dropout
        adapter = mixable_adapter(policy)
        if adapter is None:
            with policy.disable_adapter():
                ref = sample(policy, prompt_ids, 1, **kw)
            parts = [sample(policy, prompt_ids, n, **kw), ref]  # right-pad to one width
            width = max(ids.shape[1] for ids, _ in parts)
            pad = [F.pad(ids, (0, width - ids.shape[1]), value=self.pad_id) for ids, _ in parts]
            return torch.cat(pad), torch.cat([lens for _, lens in parts])
        with row_masked_lora(policy, adapter, [False, True]), torch.no_grad():  # prompt once
            start = prefill(policy, prompt_ids, 2, torch.tensor([0] * n + [1]))
        with row_masked_lora(policy, adapter, [False] * n + [True]):
            return sample(policy, prompt_ids, n + 1, start=start, **kw)

    def rewards(
        self, prompt: str, texts: list[str], dropout_seed: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``rewards`` of the run's reward model (dropout on, seeded, with ``dropout_seed``)."""
        m = self.m
        return rewards(
            m.reward_model, self.head, m.rm_tokenizer, self.cfg, prompt, texts, dropout_seed
        )

    def scoring_dropout_seed(self, t: int) -> int | None:
        """The seed of the RM's dropout when this agent's candidates are scored with it on (the
        paper's asymmetry, ``rm_dropout_asymmetry``: naive-like agents only), else None."""
        on = self.cfg.rm_dropout_asymmetry and self.cfg.penalty_form not in ("practical", "relaxed")
        return self.step_seed(t) + 2 if on else None

    # ---------------------------------------------------------------- scoring
    def score(self, prompt: str, prompt_ids, resp, lengths, texts, t: int = 0) -> dict:
        """U, r, h, penalty and FPO score of candidates (rows 0..n-1) and reference (row n)."""
        cfg, policy = self.cfg, self.m.policy
        policy.eval()
        with policy.disable_adapter():  # the oracle: the base model (queries counted by step)
            u = utility(policy, cfg, prompt_ids, resp, lengths)
        r, h = self.rewards(prompt, texts, self.scoring_dropout_seed(t))
        n = resp.shape[0] - 1
        form = cfg.penalty_form  # the agent class's llm_penalty (agents.registry)
        if form in ("random", "labelled"):  # the controls score as naive (random: does not choose)
            form = "none"
        score, pen = fpo_scores(form, cfg.gamma, r[:n], h[:n], r[n], h[n], u[:n], u[n])
        return {"u": u, "r": r, "h": h, "penalty": pen, "score": score}

    # ---------------------------------------------------------------- updates
    def rm_step(self, t: int, h_w: torch.Tensor, h_ref: torch.Tensor, u_w, u_ref) -> float:
        """Bradley-Terry loss of the head on (winner(s) vs reference), soft labels sigmoid(U_w -
        U_ref) (mean over the pairs), accumulated over ``rm_grad_accum`` steps (README, "One step": the bias gets no gradient)."""
        logit = (self.head(h_w) - self.head(h_ref.unsqueeze(0))).view(-1).float()
        label = torch.sigmoid(u_w - u_ref).float()
        loss = F.binary_cross_entropy_with_logits(logit, label)
        (loss / self.cfg.rm_grad_accum).backward()
        _optimizer_step(self.rm_opt, self.cfg.rm_grad_accum, t)
        return loss.item()

    def sft_step(self, t: int, prompt_ids, resp_w, len_w) -> float:
        """SFT on the winner (mean token NLL), with gradient accumulation; the dropout runs on the
        global torch RNG seeded from (seed, step), restored after."""
        self.m.policy.train()
        with _seeded_rng(self.cfg.device, self.step_seed(t) + 1):
            if self.cfg.sft_on == "sequence":
                loss = sequence_nll(self.m.policy, prompt_ids, resp_w, len_w)
            else:
                loss = response_nll(self.m.policy, prompt_ids, resp_w.unsqueeze(0), len_w.view(1))
                loss = loss[0]
            (loss / self.cfg.grad_accum).backward()
        _optimizer_step(self.policy_opt, self.cfg.grad_accum, t)
        self.m.policy.eval()
        return loss.item()

    # ---------------------------------------------------------------- one step
    def eligible(self, texts: list[str]) -> list[bool]:
        """Which candidates may win: all, or the non-empty ones with ``skip_empty``."""
        return [not (self.cfg.skip_empty and not x.strip()) for x in texts[: self.cfg.candidates]]

    def pick_winner(self, t: int, score: torch.Tensor, texts: list[str]) -> int | None:
        """The winner's row: best score among the ``eligible`` candidates, or a seeded uniform pick
        among them (random-winner control); None when none is eligible."""
        n = self.cfg.candidates
        ok = self.eligible(texts)
        if not any(ok):
            return None
        if self.cfg.penalty_form == "random":
            eligible = [i for i in range(n) if ok[i]]
            pick = np.random.default_rng([self.cfg.seed, t, 0x5A]).integers(len(eligible))
            return eligible[int(pick)]
        masked = score.masked_fill(~torch.tensor(ok, device=score.device), float("-inf"))
        return int(torch.argmax(masked))

    def oracle_cost(self, texts: list[str], winner: int | None) -> int:
        """Oracle queries of a step (the one rule of ``llm_track/README.md``): U(winner) and
        U(reference), 2; relaxed FPO and the budget control read U of every eligible candidate,
        eligible + 1."""
        if winner is None:
            return 0
        return (
            sum(self.eligible(texts)) + 1 if self.cfg.penalty_form in ("relaxed", "labelled") else 2
        )

    def step(self, t: int) -> dict:
        cfg, dev = self.cfg, self.cfg.device
        self.generator.manual_seed(self.step_seed(t))
        p_idx = self.prompt_index(t)
        prompt = self.prompts[p_idx]
        prompt_ids = self.prompt_ids(prompt)

        t0 = _clock(dev)
        resp, lengths = self.generate_step(prompt_ids)
        texts = decode(self.tok, resp, lengths)
        t1 = _clock(dev)

        s = self.score(prompt, prompt_ids, resp, lengths, texts, t=t)
        n = cfg.candidates
        w = self.pick_winner(t, s["score"], texts)
        t2 = _clock(dev)

        u, r, h = s["u"], s["r"], s["h"]
        skipped = w is None
        if skipped:  # nothing to learn from: no update, but the accumulation windows still end
            w, rm_loss, sft_loss = 0, float("nan"), float("nan")
            _optimizer_step(self.rm_opt, cfg.rm_grad_accum, t)
            _optimizer_step(self.policy_opt, cfg.grad_accum, t)
        else:
            rows = [w]  # the RM's pairs: the winner's, or every eligible one's (budget control)
            if cfg.penalty_form == "labelled":
                rows = [i for i, ok in enumerate(self.eligible(texts)) if ok]
            h_w, h_ref = h[rows], h[n]
            if cfg.rm_dropout_asymmetry:  # the paper's RM update: features with dropout on
                pair = [texts[i] for i in rows] + [texts[n]]
                _, h_pair = self.rewards(prompt, pair, self.step_seed(t) + 3)
                h_w, h_ref = h_pair[:-1], h_pair[-1]
            rm_loss = self.rm_step(t, h_w, h_ref, u[rows], u[n])
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
    def _lora(self) -> dict:
        return {n: p for n, p in self.m.policy.named_parameters() if p.requires_grad}

    def save_checkpoint(self, folder: str, meta: dict | None = None) -> None:
        """Adapter (``save_pretrained``), LoRA weights, head, optimisers, pending gradients, torch
        RNG and sampling generator states, step; ``meta`` (JSON; ``llm_track.run``'s: settings,
        metrics-rows digest) in ``meta.json``. Written whole or not at all (``written_whole``)."""
        lora = self._lora()
        state = {
            "step": self.step_count,
            "oracle_queries": self.oracle_queries,
            "lora": {n: p.detach().cpu().clone() for n, p in lora.items()},
            "lora_grad": _grads(lora),
            "rm_head": {k: v.cpu().clone() for k, v in self.head.state_dict().items()},
            "rm_head_grad": _grads(dict(self.head.named_parameters())),
            "policy_opt": self.policy_opt.state_dict(),
            "rm_opt": self.rm_opt.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "generator": self.generator.get_state()},
        }
        with written_whole(folder) as tmp:
            self.m.policy.save_pretrained(os.path.join(tmp, "adapter"))
            torch.save(state, os.path.join(tmp, "state.pt"))
            torch.save(state["rm_head"], os.path.join(tmp, "rm_head.pt"))
            if meta is not None:
                atomic_write_json(os.path.join(tmp, "meta.json"), meta, default=str)

    def load_checkpoint(self, folder: str) -> int:
        """Restore a checkpoint written by ``save_checkpoint``; returns the step to continue at."""
        # weights_only: tensors and plain containers only, no arbitrary unpickling
        state = torch.load(os.path.join(folder, "state.pt"), map_location="cpu", weights_only=True)
        lora = self._lora()
        with torch.no_grad():
            for n, v in state["lora"].items():
                lora[n].copy_(v)
        _set_grads(lora, state["lora_grad"])
        self.head.load_state_dict(state["rm_head"])
        _set_grads(dict(self.head.named_parameters()), state["rm_head_grad"])
        self.policy_opt.load_state_dict(state["policy_opt"])
        self.rm_opt.load_state_dict(state["rm_opt"])
        torch.set_rng_state(state["rng"]["torch"])
        self.generator.set_state(state["rng"]["generator"])
        self.oracle_queries = state["oracle_queries"]
        self.step_count = state["step"]
        return self.step_count
