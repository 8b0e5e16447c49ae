"""LoRA adapter mixing: base-model rows (the reference) and adapter rows (the candidates) in one
batch of the LoRA policy (``llm_track/README.md``, "One step")."""

from __future__ import annotations

from contextlib import contextmanager

import torch


def mixable_adapter(model) -> str | None:
    """The adapter that ``row_masked_lora`` can mix with base rows in one batch, or None. Exact
    for a plain LoRA adapter: each LoRA layer adds ``lora_B(lora_A(dropout(x))) * scaling`` to the
    base output, so zeroing ``lora_B``'s output rows gives the base model's rows. Not for variants
    (DoRA), LoRA on embeddings, modules_to_save or trainable tokens (they replace base modules,
    which a mask on the LoRA update does not undo), merged or disabled adapters."""
    try:
        from peft import PeftModel
        from peft.tuners.lora import LoraLayer, LoraModel
    except ImportError:
        return None
    if not isinstance(model, PeftModel) or not isinstance(model.base_model, LoraModel):
        return None
    if getattr(model, "_adapters_disabled", False) or len(model.active_adapters) != 1:
        return None
    name = model.active_adapters[0]
    config = model.peft_config.get(name)
    if config is None or config.is_prompt_learning or getattr(config, "use_dora", False):
        return None
    if getattr(config, "modules_to_save", None) or getattr(config, "trainable_token_indices", None):
        return None
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    for m in layers:
        variant = name in getattr(m, "lora_variant", {}) or getattr(m, "use_dora", {}).get(name)
        if m.merged or m.disable_adapters or variant or name in getattr(m, "lora_embedding_A", {}):
            return None
        if name in m.lora_A and (
            not isinstance(m.lora_B[name], torch.nn.Module) or m.active_adapters != [name]
        ):
            return None
    return name if any(name in m.lora_A for m in layers) else None


@contextmanager
def row_masked_lora(model, adapter: str, base_rows: list[bool]):
    """Rows flagged in ``base_rows`` run the base model, the rest ``adapter`` (which must be
    ``mixable_adapter(model)``); the mask is built once: no host-device sync per token."""
    from peft.tuners.lora import LoraLayer

    if mixable_adapter(model) != adapter:
        raise ValueError(f"row-mask mixing needs {adapter!r} as the one plain LoRA adapter")
    device = next(model.parameters()).device
    drop = torch.tensor(base_rows, dtype=torch.bool, device=device)

    def hook(module, args, out):
        return out.masked_fill(drop.view(-1, *([1] * (out.dim() - 1))), 0.0)

    handles = []
    try:
        for m in model.modules():
            if isinstance(m, LoraLayer) and adapter in m.lora_B:
                handles.append(m.lora_B[adapter].register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()
