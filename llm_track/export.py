"""The final policy of a run as a LoRA adapter that lm-evaluation-harness loads, with the command
that evaluates it (``llm_track/README.md``, "lm-evaluation-harness")."""

from __future__ import annotations

import os
import shlex
import shutil
from contextlib import contextmanager

from baselines.results import atomic_write_json, atomic_write_text, read_json

TASKS = "mmlu,arc_challenge,truthfulqa_mc2"


@contextmanager
def written_whole(folder: str):
    """Yields an empty ``folder + '.tmp'`` to write into, then swaps it in for ``folder`` (through
    ``folder + '.old'``), so a crash never leaves half a folder."""
    tmp, old = folder + ".tmp", folder + ".old"
    for path in (tmp, old):
        shutil.rmtree(path, ignore_errors=True)
    os.makedirs(tmp)
    yield tmp
    if os.path.exists(folder):
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def export_adapter(policy, cfg, folder: str) -> str:
    """Write ``folder/adapter`` (see the module docstring) atomically; returns its path."""
    from llm_track.models import build_tiny_models, model_path

    out = os.path.join(folder, "adapter")
    with written_whole(out) as tmp:
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
            local = os.path.expanduser(model_path(cfg.policy))
            base = os.path.abspath(local) if os.path.exists(local) else cfg.policy
        path = os.path.join(tmp, "adapter_config.json")
        atomic_write_json(path, {**read_json(path), "base_model_name_or_path": base})
        # the lm-evaluation-harness command for the base model and this adapter
        model_args = shlex.quote(f"pretrained={base},peft={os.path.abspath(out)},dtype={cfg.dtype}")
        output = shlex.quote(os.path.join(folder, "lm_eval"))
        atomic_write_text(
            os.path.join(tmp, "lm_eval.sh"),
            "#!/usr/bin/env bash\n# Evaluate this run's final policy (not run by the suite)\n"
            f"lm_eval --model hf --model_args {model_args} --tasks {TASKS} --batch_size 8 "
            f"--output_path {output}\n",
        )
    return out
