"""PromptDataModule: validation, prompt limits, chat template, sharding, rollout repeats, epochs, resume."""
from __future__ import annotations

import re
import warnings

import pytest

from lightning_trepo.data import ListSource, PromptDataModule


def numbered(n: int) -> list[dict]:
    """``n`` rows with prompt ``"p<i>"`` and an ``answer`` and ``id`` column."""
    return [{"prompt": f"p{i}", "answer": str(i), "id": i} for i in range(n)]


def batches(dm: PromptDataModule) -> list[dict]:
    return list(dm.train_dataloader())


def make(rows: list[dict], tokenizer, connect: dict | None = None, **kwargs) -> PromptDataModule:
    dm = PromptDataModule(source=ListSource(rows), **kwargs)
    dm.setup("fit")
    dm.connect(tokenizer, **(connect or {}))
    return dm


def test_default_is_the_builtin_addition_task(char_tokenizer) -> None:
    dm = PromptDataModule()
    dm.connect(char_tokenizer)
    first = next(iter(dm.train_dataloader()))
    assert set(first) == {"prompts", "raw_prompts", "prompt_ids", "metadata", "row", "rollout_step", "rollout_id"}
    assert first["raw_prompts"] == first["prompts"]  # no chat template: what rewards read is what the policy sees
    assert len(first["prompts"]) == 8 and first["rollout_step"] == 0 and first["rollout_id"] == 0
    for text, ids, meta in zip(first["prompts"], first["prompt_ids"], first["metadata"], strict=True):
        a, b = re.fullmatch(r"(\d+)\+(\d+)=", text).groups()
        assert meta["answer"] == str(int(a) + int(b)) and meta["task"] == "addition"
        assert "prompt" not in meta
        assert char_tokenizer.decode(ids) == text and len(ids) == len(text)  # one token per character
    assert len(dm.train_dataloader()) == 2000 // 8


def test_batch_format_metadata_and_rows(char_tokenizer) -> None:
    dm = make(numbered(4), char_tokenizer, batch_size=2, shuffle=False)
    out = batches(dm)
    # 4 rows, one rank, batch 2, no shuffle: rows [0, 1] then [2, 3]
    assert [b["row"] for b in out] == [[0, 1], [2, 3]]
    assert out[1]["prompts"] == ["p2", "p3"]
    assert out[1]["prompt_ids"] == [char_tokenizer("p2")["input_ids"], char_tokenizer("p3")["input_ids"]]
    assert out[1]["metadata"] == [{"answer": "2", "id": 2}, {"answer": "3", "id": 3}]
    assert [b["rollout_id"] for b in out] == [0, 1]


def test_row_without_prompt_column_names_row_column_and_source(char_tokenizer) -> None:
    rows = numbered(3)
    rows[2] = {"question": "1+1=", "answer": "2"}
    dm = PromptDataModule(source=ListSource(rows))
    expected = r"row 2 of ListSource\(<3 rows>\) has no prompt column 'prompt'.*\['answer', 'question'\]"
    with pytest.raises(ValueError, match=expected):
        dm.setup("fit")
    with pytest.raises(ValueError, match=r"row 0 of .* no prompt column 'question'"):
        make(numbered(2), char_tokenizer, prompt_column="question")


def test_overlong_prompt_errors_with_the_row(char_tokenizer) -> None:
    rows = [{"prompt": "abc"}, {"prompt": "abcdefg"}, {"prompt": "abcdefgh"}]
    # char tokenizer: len(text) tokens; with max 5, rows 1 (7 tokens) and 2 (8 tokens) are too long
    expected = r"row 1 of ListSource.* 7 tokens, more than max_prompt_length=5 \(2 of 3 rows"
    with pytest.raises(ValueError, match=expected):
        make(rows, char_tokenizer, max_prompt_length=5)


def test_overlong_prompt_truncate_left_keeps_the_last_tokens_and_warns_once(char_tokenizer) -> None:
    rows = [{"prompt": "abc"}, {"prompt": "abcdefg"}, {"prompt": "abcdefgh"}]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm = make(rows, char_tokenizer, max_prompt_length=5, overlong_prompt="truncate_left", batch_size=3,
                  shuffle=False)
    messages = [str(w.message) for w in caught if "max_prompt_length" in str(w.message)]
    assert len(messages) == 1 and messages[0].startswith("2 of 3 prompts")
    (batch,) = batches(dm)
    assert batch["prompts"] == ["abc", "cdefg", "defgh"]  # last 5 characters of the long ones
    assert [len(ids) for ids in batch["prompt_ids"]] == [3, 5, 5]
    assert batch["prompt_ids"][2] == char_tokenizer("defgh")["input_ids"]


def test_chat_template_for_messages_rows_and_auto_for_plain_rows(chat_tokenizer, char_tokenizer) -> None:
    rows = [
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2="}], "answer": "4"},
        {"prompt": "1+1=", "answer": "2"},
    ]
    dm = make(rows, chat_tokenizer, batch_size=2, shuffle=False)
    (batch,) = batches(dm)
    # conftest.CHAT_TEMPLATE: "<role>content\n" per message, then "<assistant>" for the generation prompt
    assert batch["prompts"] == ["<system>be brief\n<user>2+2=\n<assistant>", "<user>1+1=\n<assistant>"]
    assert batch["prompt_ids"][0] == chat_tokenizer(batch["prompts"][0], add_special_tokens=False)["input_ids"]
    # the chat each prompt was rendered from rides in the metadata (a plain prompt: one user turn)
    assert batch["metadata"] == [{"answer": "4", "prompt_messages": rows[0]["messages"]},
                                 {"answer": "2", "prompt_messages": [{"role": "user", "content": "1+1="}]}]
    assert batch["raw_prompts"] == ["2+2=", "1+1="]  # rewards and judges read the prompt before the template
    dm = make(rows, chat_tokenizer, connect={"use_chat_template": False}, batch_size=2, shuffle=False)
    (batch,) = batches(dm)
    assert batch["prompts"][1] == "1+1="  # plain rows stay plain, chat rows still use the template
    assert batch["metadata"][1] == {"answer": "2"}  # no template, no chat
    with pytest.raises(ValueError, match=r"row 0 of ListSource.* chat \('messages' column\).* no chat_template"):
        make(rows, char_tokenizer)
    with pytest.raises(ValueError, match="use_chat_template=True but the tokenizer has no chat_template"):
        make(rows[1:], char_tokenizer, connect={"use_chat_template": True})


def test_two_ranks_get_disjoint_prompts_and_the_same_number_of_batches(char_tokenizer) -> None:
    # 7 rows, 2 ranks, no shuffle: rank 0 takes [0, 2, 4], rank 1 [1, 3, 5] (cut to 7 // 2 = 3 each,
    # so row 6 is left out); batch 2 without drop_last: [[0, 2], [4]] and [[1, 3], [5]]
    ranks = [{"rank": r, "world_size": 2} for r in (0, 1)]
    unshuffled = [make(numbered(7), char_tokenizer, c, batch_size=2, shuffle=False, drop_last=False) for c in ranks]
    seen = [[b["row"] for b in batches(dm)] for dm in unshuffled]
    assert seen == [[[0, 2], [4]], [[1, 3], [5]]]
    shuffled = [batches(make(numbered(23), char_tokenizer, c, batch_size=4, seed=3)) for c in ranks]
    rows = [[i for b in out for i in b["row"]] for out in shuffled]
    assert len(shuffled[0]) == len(shuffled[1]) == 11 // 4  # 11 rows per rank, drop_last
    assert not set(rows[0]) & set(rows[1])
    assert [b["rollout_id"] for b in shuffled[0]] == [b["rollout_id"] for b in shuffled[1]] == [0, 1]


def test_each_batch_is_repeated_for_every_step_of_its_rollout(char_tokenizer) -> None:
    dm = make(numbered(6), char_tokenizer, {"steps_per_rollout": 3}, batch_size=2, shuffle=False)
    loader = dm.train_dataloader()
    out = list(loader)
    assert len(loader) == len(out) == 3 * 3  # 3 batches x 3 steps
    assert [(b["row"], b["rollout_step"], b["rollout_id"]) for b in out] == [
        (rows, step, rid) for rid, rows in enumerate([[0, 1], [2, 3], [4, 5]]) for step in range(3)
    ]


def test_epochs_reshuffle_deterministically(char_tokenizer) -> None:
    def run(seed: int) -> list[list[list[int]]]:
        dm = make(numbered(12), char_tokenizer, batch_size=3, seed=seed)
        loader = dm.train_dataloader()
        return [[b["row"] for b in loader] for _ in range(3)]  # a new iterator is a new epoch

    epochs = run(seed=0)
    for rows in epochs:
        assert sorted(i for batch in rows for i in batch) == list(range(12))
    assert epochs[0] != epochs[1] != epochs[2]
    assert run(seed=0) == epochs and run(seed=1) != epochs
    dm = make(numbered(12), char_tokenizer, batch_size=3, seed=0)
    dm.train_dataloader().dataset.set_epoch(2)
    assert [b["row"] for b in batches(dm)] == epochs[2]


def test_resume_mid_epoch_continues_with_the_next_batch(char_tokenizer) -> None:
    def fresh() -> PromptDataModule:
        return make(numbered(12), char_tokenizer, {"steps_per_rollout": 2}, batch_size=3, seed=4)

    dm = fresh()
    loader = dm.train_dataloader()
    full = [(b["row"], b["rollout_step"], b["rollout_id"]) for _ in range(2) for b in loader]
    dm = fresh()
    iterator = iter(dm.train_dataloader())
    for _ in range(5):  # epoch 0 has 4 batches x 2 steps = 8 items; stop after 5
        next(iterator)
    state = dm.state_dict()
    assert state == {"epoch": 0, "consumed": 5}
    resumed = fresh()
    resumed.load_state_dict(state)
    loader = resumed.train_dataloader()
    rest = [(b["row"], b["rollout_step"], b["rollout_id"]) for _ in range(2) for b in loader]
    assert rest == full[5:]  # the rest of epoch 0, then all of epoch 1


def test_val_dataloader_batches_held_out_prompts_in_order(char_tokenizer) -> None:
    dm = PromptDataModule(source=ListSource(numbered(8)), val_source=ListSource(numbered(5)), val_batch_size=2)
    with pytest.raises(RuntimeError, match=r"val_dataloader\(\) needs the policy's tokenizer"):
        dm.val_dataloader()
    dm.setup("fit")
    dm.connect(char_tokenizer, steps_per_rollout=4, rank=1, world_size=2)
    out = [list(dm.val_dataloader()) for _ in range(2)]
    # rank 1 of 2 gets rows [1, 3] (5 // 2 = 2 each): one batch, step 0, the same on every pass
    assert [(b["row"], b["rollout_step"], b["rollout_id"]) for b in out[0]] == [([1, 3], 0, 0)]
    assert out[0] == out[1]
    assert PromptDataModule(source=ListSource(numbered(2))).val_dataloader() == []


def test_dataloaders_need_connect_first() -> None:
    dm = PromptDataModule(source=ListSource(numbered(4)))
    with pytest.raises(RuntimeError, match=r"train_dataloader\(\) needs the policy's tokenizer: call connect"):
        dm.train_dataloader()


def test_too_few_rows_for_a_batch_is_an_error(char_tokenizer) -> None:
    dm = make(numbered(5), char_tokenizer, {"world_size": 2}, batch_size=3)
    with pytest.raises(ValueError, match=r"has 5 rows: 2 per rank for world_size=2, fewer than batch_size=3"):
        dm.train_dataloader()
