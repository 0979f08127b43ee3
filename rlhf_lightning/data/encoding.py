"""Token encoding shared by data modules and reward models: prompts (text or chat messages),
responses (EOS appended) and the prompt + response block layout."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

Messages = list[dict[str, Any]]


def encode_prompt(tokenizer, prompt: Union[str, Messages]) -> list[int]:
    """Prompt tokens: plain text with the tokenizer's special tokens, or chat messages through the
    tokenizer's chat template (with the generation prompt of the assistant turn).

    Text that already starts with the BOS token (a chat template rendered beforehand) gets no second one.
    """
    if isinstance(prompt, str):
        bos = getattr(tokenizer, "bos_token", None)
        has_bos = bool(bos) and prompt.startswith(bos)
        return list(tokenizer(prompt, add_special_tokens=not has_bos)["input_ids"])
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the prompt is a list of chat messages, but the tokenizer has no chat template")
    return _chat_ids(tokenizer, list(prompt), add_generation_prompt=True)


def _chat_ids(tokenizer, messages: Messages, add_generation_prompt: bool) -> list[int]:
    """Token ids of ``messages`` rendered by the tokenizer's chat template (its own BOS, none added); a
    conversation the template refuses (``raise_exception``, e.g. roles that do not alternate) is a ValueError."""
    try:
        from jinja2 import TemplateError
    except ImportError:  # transformers renders templates with jinja2; without it nothing is caught here
        TemplateError = ()
    try:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    except TemplateError as error:
        raise ValueError(f"the tokenizer's chat template refuses the conversation ({error})") from None
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def prompt_text(tokenizer, prompt: Union[str, Messages]) -> str:
    """A prompt as text: itself, or chat messages rendered by the tokenizer's chat template (with the
    generation prompt), for models that read text."""
    if isinstance(prompt, str):
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the prompt is a list of chat messages, but the tokenizer has no chat template")
    return tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=False)


ROLES = ("system", "user", "assistant", "tool", "developer", "function", "ipython")
ROLE_NAMES = {"human": "user", "gpt": "assistant", "bot": "assistant", "ai": "assistant", "model": "assistant"}


def describe(value: Any) -> str:
    """``a str``, ``an int``, ``a null``: what a value is, for messages."""
    name = type(value).__name__ if value is not None else "null"
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def message_problem(messages: Sequence[Any]) -> Optional[str]:
    """Why ``messages`` is not a list of chat messages ``{"role", "content"}`` with a known role (None when
    it is): what the first bad message holds."""
    for number, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"message {number} is {describe(message)}, not a {{'role', 'content'}} object"
        if "role" not in message or "content" not in message:
            keys = ", ".join(sorted(map(str, message))) or "none"
            style = " (ShareGPT style)" if {"from", "value"} <= set(message) else ""
            return f"message {number} has no 'role' and 'content' (keys: {keys}){style}"
        if message["role"] not in ROLES:
            known = ROLE_NAMES.get(str(message["role"]).lower())
            hint = f"write '{known}'" if known else f"roles: {', '.join(ROLES[:4])}, ..."
            return f"message {number} has the role {message['role']!r} ({hint})"
        if not isinstance(message["content"], (str, list)) and message["content"] is not None:
            return f"the content of message {number} is {describe(message['content'])}, not text"
    return None


def prompt_problem(value: Any) -> Optional[str]:
    """Why ``value`` is not a prompt (text, or a list of chat messages ``{"role", "content"}``), e.g. "an int"
    or "message 0 has no 'role' and 'content'"; None when it is a prompt."""
    if isinstance(value, str):
        return None
    if isinstance(value, list) and all(isinstance(item, dict) for item in value):
        return message_problem(value)
    return value_problem(value)


def value_problem(value: Any) -> str:
    """What a value that is neither text nor chat messages holds: "an int", "a list of str", ..."""
    if isinstance(value, list):
        kinds = sorted({type(item).__name__ for item in value if not isinstance(item, dict)}) or ["nothing"]
        return f"a list of {', '.join(kinds)}"
    if isinstance(value, dict):
        return "one message object, not a list of them (wrap it in [...])"
    if isinstance(value, bytes):
        return "bytes (decode them as UTF-8 when writing the file)"
    return describe(value)


def is_prompt(value: Any) -> bool:
    """Whether ``value`` is a prompt: text, or a list of chat messages ``{"role", "content"}``."""
    return prompt_problem(value) is None


def response_problem(value: Any) -> Optional[str]:
    """Why ``value`` is not a response (text, one assistant message, or messages ending with one); None when
    it is."""
    if isinstance(value, str):
        return None
    if isinstance(value, dict):
        return message_problem([value])
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return message_problem(value)
    return value_problem(value)


def is_empty_prompt(prompt: Union[str, Messages, None]) -> bool:
    """Whether a prompt has no text: an empty or blank string, no messages, or messages with no content."""
    if prompt is None:
        return True
    if isinstance(prompt, str):
        return not prompt.strip()
    return not any(str(message.get("content") or "").strip() for message in prompt if isinstance(message, dict))


def response_text(response: Union[str, dict, Messages]) -> str:
    """The text of a response given as a string, a message ``{"role", "content"}`` or a list ending in one."""
    if isinstance(response, str):
        return response
    if isinstance(response, dict):
        return str(response.get("content") or "")
    if isinstance(response, list) and response:
        return response_text(response[-1])
    return ""


def encode_response(tokenizer, response: Union[str, dict, Messages],
                    prompt: Union[str, Messages, None] = None) -> list[int]:
    """Response tokens, ending with what the policy must learn to end with.

    For a chat prompt (a list of messages) and a tokenizer with a chat template: the template's assistant
    turn after the generation prompt, so the target ends with the template's end-of-turn token(s)
    (``<|im_end|>``, ``<end_of_turn>``, ``<|eot_id|>``, ...), which the generation engine counts as EOS.
    Otherwise (or when the template renders the turn inconsistently with its generation prompt): the
    text's tokens with the tokenizer's EOS appended.
    """
    text = response_text(response)
    if isinstance(prompt, list) and getattr(tokenizer, "chat_template", None):
        prefix = encode_prompt(tokenizer, prompt)
        full = _chat_ids(tokenizer, list(prompt) + [{"role": "assistant", "content": text}], add_generation_prompt=False)
        if len(full) > len(prefix) and full[:len(prefix)] == prefix:
            return full[len(prefix):]
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]


def pad_rows(rows: Sequence[Sequence[int]], pad_token_id: int, side: str = "right",
             width: int | None = None) -> tuple[Tensor, Tensor]:
    """Token lists as ``input_ids``/``attention_mask`` ``[N, W]`` (``W`` the longest row, or ``width``),
    padded on the ``left`` (prompts for generation) or the ``right`` (responses, texts)."""
    width = max([len(row) for row in rows] + [0]) if width is None else width
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if not len(row):
            continue
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        input_ids[i, span] = torch.as_tensor(list(row), dtype=torch.long)
        attention_mask[i, span] = 1
    return input_ids, attention_mask


def pad_prompt_response(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                        pad_token_id: int) -> tuple[Tensor, Tensor, int]:
    """``input_ids``/``attention_mask`` ``[N, P + R]``: prompts left-padded to ``P``, responses right-padded to ``R``."""
    prompt_ids, prompt_mask = pad_rows(prompts, pad_token_id, "left")
    response_ids, response_mask = pad_rows(responses, pad_token_id, "right", max(1, max(len(r) for r in responses)))
    return torch.cat([prompt_ids, response_ids], 1), torch.cat([prompt_mask, response_mask], 1), prompt_ids.shape[1]


def other_columns(record: dict, prompt_column: str) -> dict[str, Any]:
    """A data row's columns besides the prompt, by name (what reward functions may read)."""
    return {key: value for key, value in record.items() if key != prompt_column}


def collate_prompt_rows(rows: Sequence[dict], pad_token_id: int) -> dict:
    """Encoded prompt rows (``prompt``, ``input_ids``, optional ``columns``/``reference``) as a generation batch:
    ``input_ids``/``attention_mask`` ``[B, P]`` left-padded, the ``prompt`` values, every other column as a
    list (``None`` where a row lacks it) and ``reference`` when every row has one."""
    input_ids, attention_mask = pad_rows([row["input_ids"] for row in rows], pad_token_id, "left")
    names = list(dict.fromkeys(name for row in rows for name in row.get("columns", {})))
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "prompt": [row["prompt"] for row in rows],
             "columns": {name: [row.get("columns", {}).get(name) for row in rows] for name in names}}
    if all("reference" in row for row in rows):
        batch["reference"] = [row["reference"] for row in rows]
    return batch
