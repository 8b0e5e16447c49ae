"""The final policy of a run as a LoRA adapter that lm-evaluation-harness loads.

``llm_track.run`` writes ``OUT/<label>/seed_<s>/adapter/`` at the end of a run: the adapter
(``adapter_config.json`` + ``adapter_model.safetensors``, peft's ``save_pretrained``) whose
``base_model_name_or_path`` names the policy's base model (hub id, or the absolute path of a local
folder), the policy's tokenizer, and ``lm_eval.sh``, the command that evaluates it (the paper's
MMLU / ARC-Challenge, and TruthfulQA multiple choice)::

    lm_eval --model hf \\
      --model_args pretrained=meta-llama/Llama-3.2-1B-Instruct,peft=OUT/fpo-relaxed/seed_0/adapter,dtype=bfloat16 \\
      --tasks mmlu,arc_challenge,truthfulqa_mc2 --batch_size 8 --output_path OUT/fpo-relaxed/seed_0/lm_eval

lm-evaluation-harness (``pip install lm-eval``, not a dependency here) loads ``pretrained`` with
transformers and the adapter with ``peft.PeftModel.from_pretrained(model, peft)``; the tests load
the export exactly that way. ``tiny`` runs also get ``adapter/base/`` (the tiny base model and its
tokenizer), so that ``pretrained=.../adapter/base`` works offline; evaluating tiny models with
lm-eval's benchmarks says nothing, it only checks the path.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil

TASKS = "mmlu,arc_challenge,truthfulqa_mc2"


def lm_eval_command(base: str, adapter: str, dtype: str, output: str) -> str:
    """The lm-evaluation-harness command line for a base model and an exported adapter."""
    args = f"pretrained={base},peft={adapter},dtype={dtype}"
    return (
        f"lm_eval --model hf --model_args {shlex.quote(args)} --tasks {TASKS} "
        f"--batch_size 8 --output_path {shlex.quote(output)}"
    )


def export_adapter(policy, cfg, folder: str) -> str:
    """Write ``folder/adapter`` (see the module docstring) atomically; returns its path."""
    from llm_track.models import build_tiny_models

    out = os.path.join(folder, "adapter")
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(tmp)
    if cfg.policy == "tiny":
        from transformers.utils import logging as hf_logging

        base_model, _, tok = build_tiny_models(cfg)
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Writing model shards" bar on stderr
        try:
            base_model.save_pretrained(os.path.join(tmp, "base"))
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        tok.save_pretrained(os.path.join(tmp, "base"))
        base = os.path.abspath(os.path.join(out, "base"))
    else:
        local = os.path.expanduser(cfg.policy)
        base = os.path.abspath(local) if os.path.exists(local) else cfg.policy
    path = os.path.join(tmp, "adapter_config.json")
    with open(path, encoding="utf-8") as f:
        adapter_config = json.load(f)
    adapter_config["base_model_name_or_path"] = base
    with open(path, "w", encoding="utf-8") as f:
        json.dump(adapter_config, f, indent=2, sort_keys=True)
        f.write("\n")
    command = lm_eval_command(
        base, os.path.abspath(out), cfg.dtype, os.path.join(folder, "lm_eval")
    )
    with open(os.path.join(tmp, "lm_eval.sh"), "w", encoding="utf-8") as f:
        f.write("#!/usr/bin/env bash\n# Evaluate this run's final policy (not run by the suite)\n")
        f.write(command + "\n")
    old = out + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(out):
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out
