"""Model sources (embedded, local HF folder, GGUF file)."""

from edgeft.models.sources import (
    EMBEDDED,
    ResolvedModel,
    cache_dir,
    check_spec,
    fix_chat_tokenizer,
    from_gguf,
    resolve_model,
)

__all__ = ["EMBEDDED", "ResolvedModel", "cache_dir", "check_spec", "fix_chat_tokenizer", "from_gguf", "resolve_model"]
