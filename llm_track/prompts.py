"""Prompts of the LLM protocol (``--prompts``; sources: ``llm_track/README.md``, "Prompts"); a
source that cannot be loaded is a one-line error, never a fallback."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from importlib import resources

from llm_track.config import PROMPT_SOURCES, LLMTrackError, first_line, hub_offline, hub_reachable

ULTRAFEEDBACK = "HuggingFaceH4/ultrafeedback_binarized"
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
MAX_PROMPTS = 100_000

#: the 40 built-in prompts (llm_track/data/builtin_prompts.json): 30 train, the last 10 held out
BUILTIN_PROMPTS: tuple[str, ...] = tuple(
    json.loads(resources.files("llm_track").joinpath("data/builtin_prompts.json").read_text())
)
N_TRAIN = 30
TRAIN_PROMPTS: tuple[str, ...] = BUILTIN_PROMPTS[:N_TRAIN]
EVAL_PROMPTS: tuple[str, ...] = BUILTIN_PROMPTS[N_TRAIN:]


def _datasets(what: str):
    try:
        import datasets  # noqa: PLC0415
    except ImportError:
        raise LLMTrackError(
            f'{what} needs the datasets package: pip install -e ".[llm]" (or pip install '
            "datasets), or use --prompts builtin"
        ) from None
    datasets.utils.logging.set_verbosity_error()
    datasets.utils.logging.disable_progress_bar()
    return datasets


def _column(ds, column: str, where: str, flag: str) -> list[str]:
    names = list(ds.column_names)
    if column not in names:
        raise LLMTrackError(
            f"{flag} {where}: no column {column!r} (columns: {', '.join(names)}); name the "
            "text column with --prompt-column"
            + ("" if flag == "--prompts" else "/--question-column")
        )
    values = ds[column][:MAX_PROMPTS]
    bad = next((i for i, v in enumerate(values) if not isinstance(v, str) or not v.strip()), None)
    if bad is not None:
        raise LLMTrackError(
            f"{flag} {where}: row {bad} of column {column!r} is not a non-empty string "
            f"({values[bad]!r:.60})"
        )
    if not values:
        raise LLMTrackError(f"{flag} {where}: no rows")
    return list(values)


def read_local(path: str, column: str, flag: str = "--prompts", split: str = "train") -> list[str]:
    """The strings of ``column`` in a local file or ``save_to_disk`` folder (no network)."""
    full = os.path.abspath(os.path.expanduser(path))
    is_dir = os.path.isdir(full)
    if not is_dir and not full.lower().endswith(LOCAL_SUFFIXES):
        raise LLMTrackError(
            f"{flag} must be {', '.join(PROMPT_SOURCES)} or a local {', '.join(LOCAL_SUFFIXES)} "
            f"file or datasets folder; got {path!r}"
        )
    if not os.path.exists(full):
        raise LLMTrackError(f"{flag} {path}: no such file or folder")
    datasets = _datasets(f"{flag} {path}")
    try:
        if is_dir:
            ds = datasets.load_from_disk(full, keep_in_memory=True)
            if isinstance(ds, datasets.DatasetDict):
                names = ("train_prefs", "train") if split == "train" else ("test_prefs", "test")
                got = next((n for n in names if n in ds), None)
                if got is None:
                    raise LLMTrackError(
                        f"{flag} {path}: a DatasetDict without a {' or '.join(names)} split "
                        f"(splits: {', '.join(ds)})"
                    )
                ds = ds[got]
        else:
            kind = full.rsplit(".", 1)[1].lower()
            reader = getattr(datasets.Dataset, f"from_{'json' if kind == 'jsonl' else kind}")
            with tempfile.TemporaryDirectory() as cache:  # no shared cache: the file is the truth
                ds = reader(full, keep_in_memory=True, cache_dir=cache)
    except LLMTrackError:
        raise
    except Exception as exc:  # a malformed file: say which and why, in one line
        raise LLMTrackError(f"{flag} {path}: cannot read it ({first_line(exc)})") from None
    return _column(ds, column, path, flag)


def _ultrafeedback(split: str) -> list[str]:
    """UltraFeedback binarized prompts (hub or ``datasets`` cache); an error when unavailable."""

    datasets = _datasets("--prompts ultrafeedback")
    offline = datasets.config.HF_HUB_OFFLINE or not hub_reachable()  # no ~25 s of retries
    old, datasets.config.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE, offline
    try:
        with hub_offline() if offline else contextlib.nullcontext():
            ds = datasets.load_dataset(ULTRAFEEDBACK, split=split)
    except Exception as exc:  # network, auth, missing cache: no fallback
        raise LLMTrackError(
            f"--prompts ultrafeedback: cannot load {ULTRAFEEDBACK} split {split} "
            f"({first_line(exc, 120)}); "
            "download it once, or pass --prompts PATH to a local copy, or --prompts builtin"
        ) from None
    finally:
        datasets.config.HF_HUB_OFFLINE = old
    return _column(ds, "prompt", f"ultrafeedback ({split})", "--prompts")


def prompts_digest(prompts: list[str]) -> str:
    """SHA-256 of the prompt list (the exact strings, in order)."""
    return hashlib.sha256(json.dumps(list(prompts), ensure_ascii=False).encode()).hexdigest()


def load_prompts(
    source: str, split: str = "train", column: str = "prompt"
) -> tuple[list[str], str]:
    """Prompts for ``split`` (``train`` or ``eval``; a local ``source`` has only ``train``, its
    evaluation questions come from ``evaluate --questions``) and where they came from."""
    if source == "builtin":
        return list(TRAIN_PROMPTS if split == "train" else EVAL_PROMPTS), "builtin"
    if source == "ultrafeedback":
        hf_split = "train_prefs" if split == "train" else "test_prefs"
        return _ultrafeedback(hf_split), f"ultrafeedback ({ULTRAFEEDBACK}, {hf_split})"
    if split != "train":
        raise LLMTrackError(
            f"the run was trained on prompts from {source}; pass the evaluation questions with "
            "--questions PATH"
        )
    full = os.path.abspath(os.path.expanduser(source))
    return read_local(source, column), f"{full} (column {column})"
