"""Turn source rows into the text and token ids the policy sees (validation, chat template, limits)."""
from __future__ import annotations

from typing import Any, Literal, get_args

from lightning.pytorch.utilities import rank_zero_warn

from lightning_trepo.data.loader import EncodedPrompts
from reward_models.types import PROMPT_MESSAGES_KEY

__all__ = ["encode_rows", "validate_rows"]

OverlongPrompt = Literal["error", "truncate_left"]
OVERLONG_POLICIES: tuple[str, ...] = get_args(OverlongPrompt)


def validate_rows(rows: list[dict[str, Any]], prompt_column: str, messages_column: str, source: str) -> None:
    """Raise ``ValueError`` naming the row and source when a row has no usable prompt.

    A row needs a ``prompt_column`` holding a string or a chat (TRL's conversational format), or
    else a ``messages_column`` holding a chat; a chat is a non-empty list of
    ``{"role": str, "content": str}`` dicts.
    """
    if not rows:
        raise ValueError(f"prompt source {source} has no rows")
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"row {index} of {source} is a {type(row).__name__}, expected a dict")
        if PROMPT_MESSAGES_KEY in row:
            raise ValueError(
                f"row {index} of {source} has a column {PROMPT_MESSAGES_KEY!r}, a name the data layer reserves for "
                f"the chat a prompt is rendered from; rename that column"
            )
        if prompt_column in row:
            if isinstance(row[prompt_column], list):  # TRL's conversational format: the prompt is a chat
                _check_messages(row[prompt_column], index, prompt_column, source)
            elif not isinstance(row[prompt_column], str):
                kind = type(row[prompt_column]).__name__
                raise ValueError(
                    f"row {index} of {source}: column {prompt_column!r} must be a string or a list of "
                    f'{{"role", "content"}} messages, got {kind}'
                )
        elif messages_column in row:
            _check_messages(row[messages_column], index, messages_column, source)
        else:
            raise ValueError(
                f"row {index} of {source} has no prompt column {prompt_column!r} (nor a chat column "
                f"{messages_column!r}); its columns are {sorted(row)}. Set data.init_args.prompt_column "
                f"to the column that holds the prompt"
            )


def _check_messages(messages: Any, index: int, column: str, source: str) -> None:
    ok = isinstance(messages, list) and len(messages) > 0
    ok = ok and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    )
    if not ok:
        raise ValueError(
            f"row {index} of {source}: column {column!r} must be a non-empty list of "
            f'{{"role": str, "content": str}} dicts, got {messages!r:.200}'
        )


def _render(
    row: dict[str, Any], index: int, tokenizer: Any, template: bool, columns: tuple[str, str], source: str,
    system_prompt: str | None = None,
) -> tuple[str, list[dict[str, Any]] | None]:
    """The prompt text of one row and the chat it was rendered from (None: plain text, no template);
    ``system_prompt``: a system turn first, unless the chat already starts with one."""
    prompt_column, messages_column = columns
    prompt = row.get(prompt_column)
    if isinstance(prompt, str) and not template:
        return prompt, None
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        column = prompt_column if prompt_column in row else messages_column
        messages = row[column]
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"row {index} of {source} is a chat ({column!r} column) but the tokenizer has no "
                f"chat_template; give a prompt column instead or use a tokenizer with a chat template"
            )
    if system_prompt is not None and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    continue_final = messages[-1]["role"] == "assistant"
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=not continue_final, continue_final_message=continue_final
    )
    return text, messages


def _tokenize(tokenizer: Any, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]]


def _limit(ids: list[list[int]], texts: list[str], tokenizer: Any, max_length: int, policy: str, source: str) -> None:
    """Apply the overlong policy in place: raise, or keep the last ``max_length`` tokens and warn once."""
    overlong = [i for i, row_ids in enumerate(ids) if len(row_ids) > max_length]
    if not overlong:
        return
    first = overlong[0]
    if policy == "error":
        raise ValueError(
            f"row {first} of {source} has a prompt of {len(ids[first])} tokens, more than max_prompt_length="
            f"{max_length} ({len(overlong)} of {len(ids)} rows are too long). Raise data.init_args.max_prompt_length "
            f"or set data.init_args.overlong_prompt: truncate_left"
        )
    for i in overlong:
        ids[i] = ids[i][-max_length:]
        texts[i] = tokenizer.decode(ids[i], skip_special_tokens=False)
    rank_zero_warn(
        f"{len(overlong)} of {len(ids)} prompts of {source} are longer than max_prompt_length={max_length} tokens "
        f"(first: row {first}); kept the last {max_length} tokens of each (overlong_prompt='truncate_left')"
    )


def encode_rows(
    rows: list[dict[str, Any]],
    tokenizer: Any,
    *,
    prompt_column: str,
    messages_column: str,
    use_chat_template: bool,
    max_prompt_length: int,
    overlong_prompt: str,
    source: str,
    system_prompt: str | None = None,
) -> EncodedPrompts:
    """Render, tokenize and length-check every row (rows must have passed :func:`validate_rows`).

    Chat-templated prompts are tokenized with ``add_special_tokens=False`` (the template already
    holds them); plain prompts with the tokenizer's default special tokens. Truncated prompts get
    their text re-decoded from the kept tokens, so ``prompts`` is what the policy actually sees.
    """
    if overlong_prompt not in OVERLONG_POLICIES:
        raise ValueError(f"overlong_prompt must be one of {OVERLONG_POLICIES}, got {overlong_prompt!r}")
    rendered = [
        _render(row, i, tokenizer, use_chat_template, (prompt_column, messages_column), source, system_prompt)
        for i, row in enumerate(rows)
    ]
    texts = [text for text, _ in rendered]
    ids: list[list[int]] = [[] for _ in rows]
    for templated in (True, False):
        where = [i for i, (_, chat) in enumerate(rendered) if (chat is not None) == templated]
        for i, row_ids in zip(where, _tokenize(tokenizer, [texts[i] for i in where], not templated), strict=True):
            ids[i] = row_ids
    _limit(ids, texts, tokenizer, max_prompt_length, overlong_prompt, source)
    metadata = [{k: v for k, v in row.items() if k not in (prompt_column, messages_column)} for row in rows]
    for meta, (_, chat) in zip(metadata, rendered, strict=True):
        if chat is not None:  # the chat reaches the rewards (TRL passes conversational prompts as messages)
            meta[PROMPT_MESSAGES_KEY] = [dict(m) for m in chat]
    raw = [_raw_prompt(row, prompt_column, messages_column) for row in rows]
    return EncodedPrompts(prompts=texts, prompt_ids=ids, metadata=metadata, source=source, raw_prompts=raw)


def _raw_prompt(row: dict[str, Any], prompt_column: str, messages_column: str) -> str:
    """The prompt as the dataset states it, before any chat template: what rewards and judges read."""
    if isinstance(row.get(prompt_column), str):
        return row[prompt_column]
    chat = row[prompt_column] if prompt_column in row else row[messages_column]
    users = [m.get("content", "") for m in chat if m.get("role") == "user"]
    return str(users[-1]) if users else ""
