"""The official openai Python SDK talking to swapproxy (in front of the fake server)."""

from __future__ import annotations

import openai

from support import fake_cmd, make_config


def config_two():
    return make_config(
        {
            "chat": {"cmd": fake_cmd("--model-name", "chat"), "aliases": ["gpt-4o-mini"]},
            "emb": {"cmd": fake_cmd("--model-name", "emb", "--embedding-dim", "16")},
        }
    )


async def test_openai_sdk_chat_completions_embeddings(proxy_factory) -> None:
    proxy = await proxy_factory(config_two())
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-anything", max_retries=0)
    try:
        listed = await client.models.list()
        assert [m.id for m in listed.data] == ["chat", "emb"]

        chat = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
        )
        assert chat.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4 "
        assert chat.usage is not None and chat.usage.completion_tokens == 5

        stream = await client.chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": "hello"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        parts, finish, usage = [], None, None
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                parts.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
        assert "".join(parts) == "tok0 tok1 tok2 tok3 tok4 "
        assert finish == "stop"
        assert usage is not None and usage.total_tokens > 0

        completion = await client.completions.create(model="chat", prompt="once upon", max_tokens=3)
        assert completion.choices[0].text == "tok0 tok1 tok2 "
        assert completion.choices[0].finish_reason == "length"

        emb = await client.embeddings.create(model="emb", input=["a", "b"])
        assert [len(d.embedding) for d in emb.data] == [16, 16]
        assert proxy.swapper.running() == ["emb"]  # one model at a time without groups

        try:
            await client.chat.completions.create(model="nope", messages=[])
        except openai.NotFoundError as exc:
            assert "model 'nope' not found in config" in str(exc)
        else:
            raise AssertionError("expected a 404")
    finally:
        await client.close()
