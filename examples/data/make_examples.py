"""Writes the small example datasets the ``configs/data/*.yaml`` overlays train on (deterministic; rerun to refresh):

    python examples/data/make_examples.py

* ``addition.jsonl``, ``addition.parquet``, ``addition_saved/`` (``Dataset.save_to_disk``): the same 64 addition
  problems with the user's own column names, ``question`` (the prompt) and ``solution`` (the reference answer);
* ``chat.jsonl``: the same problems as chats (a ``messages`` list of ``{role, content}``, some with a system turn);
* ``../chat-tokenizer/``: the shipped tiny model's character tokenizer plus a chat template, so the tiny model can
  train on chat-templated prompts offline.
"""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def rows() -> list[dict[str, str]]:
    """64 problems of the built-in addition task (train split), renamed to the columns a user's file might have."""
    from lightning_trepo.data import generate_task

    return [
        {"question": r["prompt"], "solution": r["answer"]} for r in generate_task("addition", "train", 64, 7, 2, True)
    ]


def chats(plain: list[dict[str, str]]) -> list[dict]:
    """Every third chat has its own system turn; the others get ``data.init_args.system_prompt`` if one is set."""
    out = []
    for i, row in enumerate(plain):
        messages = [{"role": "user", "content": row["question"]}]
        if i % 3 == 0:
            messages.insert(0, {"role": "system", "content": "Add."})
        out.append({"messages": messages, "solution": row["solution"]})
    return out


def main() -> None:
    import datasets

    from lightning_trepo.policy import PolicyConfig, load_tokenizer

    plain = rows()
    (HERE / "addition.jsonl").write_text("".join(json.dumps(r) + "\n" for r in plain))
    (HERE / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chats(plain)))
    dataset = datasets.Dataset.from_list(plain)
    dataset.to_parquet(str(HERE / "addition.parquet"))
    dataset.save_to_disk(str(HERE / "addition_saved"))
    tokenizer = load_tokenizer(PolicyConfig(model_path="builtin:tiny-arith"))
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(str(HERE.parent / "chat-tokenizer"))


if __name__ == "__main__":
    main()
