"""Chat rendering shared by fine-tuning, evaluation and export: one place decides the prompt format."""

from __future__ import annotations


def messages(system_prompt: str, prompt: str) -> list[dict]:
    out = []
    if system_prompt:
        out.append({"role": "system", "content": system_prompt})
    out.append({"role": "user", "content": prompt})
    return out


def prompt_ids(tokenizer, system_prompt: str, prompt: str) -> list[int]:
    """Token ids of the chat-formatted prompt, ending with the assistant turn opener."""
    text = tokenizer.apply_chat_template(messages(system_prompt, prompt), tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False).input_ids


def conversation_text(tokenizer, system_prompt: str, prompt: str, response: str) -> str:
    msgs = messages(system_prompt, prompt) + [{"role": "assistant", "content": response}]
    return tokenizer.apply_chat_template(msgs, tokenize=False)


def stop_ids(tokenizer) -> list[int]:
    """Token ids that end an assistant turn (eos and, for ChatML, <|im_end|>)."""
    ids = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for tok in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
        if tok in vocab and vocab[tok] not in ids:
            ids.append(int(vocab[tok]))
    return ids
