"""The official Python SDK client against ``python -m bemcp.examples.everything``: legacy
(initialize) and 2026-07-28 modes, both twins, over real pipes.

The client's callbacks answer sampling, elicitation and roots: as server-to-client
requests in the handshake era, as input_required rounds in 2026-07-28.
"""

import sys

import mcp_types as types
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MODES = [("legacy", "2025-11-25"), ("2026-07-28", "2026-07-28")]


def everything(twin_env):
    return StdioServerParameters(command=sys.executable, args=["-m", "bemcp.examples.everything"],
                                 env=dict(twin_env))


class Callbacks:
    """The client side of every ask, recording what it was asked."""

    def __init__(self):
        self.asked = []
        self.events = []   # ("log", data) / ("progress", n) in arrival order

    async def sampling(self, context, params):
        self.asked.append(("sampling", params.messages[0].content.text))
        return types.CreateMessageResult(role="assistant", model="test-model", stop_reason="endTurn",
                                         content=types.TextContent(type="text", text="Paris, of course"))

    async def elicitation(self, context, params):
        self.asked.append(("elicitation", params.message, params.requested_schema))
        props = params.requested_schema.get("properties", {})
        known = {"username": "testuser", "email": "test@example.com", "name": "Alice", "color": "green",
                 "context": "the release notes", "ok": True}
        content = {k: v for k, v in known.items() if k in props}
        return types.ElicitResult(action="accept", content=content)

    async def roots(self, context):
        self.asked.append(("roots",))
        return types.ListRootsResult(roots=[types.Root(uri="file:///work", name="work"),
                                            types.Root(uri="file:///tmp")])

    async def logging(self, params):
        self.events.append(("log", params.data))

    def client(self, twin_env, mode, **options):
        return Client(everything(twin_env), mode=mode, sampling_callback=self.sampling,
                      elicitation_callback=self.elicitation, list_roots_callback=self.roots,
                      logging_callback=self.logging, **options)


@pytest.mark.parametrize("mode, version", MODES)
async def test_prompts_resources_templates_and_completion(twin_env, mode, version):
    async with Client(everything(twin_env), mode=mode) as client:
        assert client.protocol_version == version
        prompts = (await client.list_prompts()).prompts
        names = [p.name for p in prompts]
        assert names == sorted(names) and "test_prompt_with_arguments" in names
        assert all(p.description for p in prompts)
        for prompt in prompts:
            if prompt.name == "test_input_required_result_prompt":
                continue   # asks the client: covered with callbacks below
            args = {a.name: f"value-of-{a.name}" for a in prompt.arguments or ()}
            got = await client.get_prompt(prompt.name, args)
            assert got.messages and all(m.role and m.content for m in got.messages)
            for value in args.values():
                assert value in got.model_dump_json()
        with_image = await client.get_prompt("test_prompt_with_image")
        assert with_image.messages[0].content.type == "image"
        embedded = await client.get_prompt("test_prompt_with_embedded_resource",
                                           {"resourceUri": "test://example-resource"})
        assert embedded.messages[0].content.resource.uri == "test://example-resource"

        resources = (await client.list_resources()).resources
        assert {str(r.uri) for r in resources} >= {"test://static-text", "test://static-binary",
                                                   "test://watched-resource"}
        templates = (await client.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["test://template/{id}/data"]

        static = (await client.read_resource("test://static-text")).contents[0]
        assert static.text == "This is the content of the static text resource." and static.mime_type == "text/plain"
        binary = (await client.read_resource("test://static-binary")).contents[0]
        assert binary.mime_type == "image/png" and binary.blob.startswith("iVBORw0KGgo")
        templated = (await client.read_resource("test://template/123/data")).contents[0]
        assert str(templated.uri) == "test://template/123/data" and '"id":"123"' in templated.text

        done = await client.complete(types.PromptReference(type="ref/prompt", name="test_prompt_with_arguments"),
                                     {"name": "arg1", "value": "test"})
        assert done.completion.values == ["testValue1", "testValue2"] and done.completion.total == 2
        ids = await client.complete(types.ResourceTemplateReference(type="ref/resource",
                                                                    uri="test://template/{id}/data"),
                                    {"name": "id", "value": "12"})
        assert ids.completion.values == ["123"]


async def test_legacy_subscribe_then_update_notifies(twin_env):
    updates = []

    async def on_message(message):
        if isinstance(message, types.ResourceUpdatedNotification):
            updates.append(str(message.params.uri))
    async with Client(everything(twin_env), mode="legacy", message_handler=on_message) as client:
        assert await client.subscribe_resource("test://watched-resource") is not None
        await client.call_tool("test_update_watched_resource", {"content": "changed"})
        assert (await client.read_resource("test://watched-resource")).contents[0].text == "changed"
        assert updates == ["test://watched-resource"]
        await client.unsubscribe_resource("test://watched-resource")
        await client.call_tool("test_update_watched_resource", {"content": "again"})
        assert updates == ["test://watched-resource"]


async def test_listen_stream_gets_only_what_it_asked_for(twin_env):
    async with Client(everything(twin_env), mode="2026-07-28") as client:
        async with client.listen(resource_subscriptions=["test://watched-resource"]) as sub:
            assert sub.honored.resource_subscriptions == ["test://watched-resource"]
            await client.call_tool("test_update_watched_resource", {"content": "changed"})
            event = await anext(aiter(sub))
            assert str(event.uri) == "test://watched-resource"


@pytest.mark.parametrize("mode, version", MODES)
async def test_sampling_elicitation_and_roots_answered_by_callbacks(twin_env, mode, version):
    cb = Callbacks()
    async with cb.client(twin_env, mode) as client:
        sampled = await client.call_tool("test_sampling", {"prompt": "Capital of France?"})
        assert sampled.content[0].text == "LLM response: Paris, of course"
        elicited = await client.call_tool("test_elicitation", {"message": "Please provide your information"})
        assert "action=accept" in elicited.content[0].text and "testuser" in elicited.content[0].text
        roots = await client.call_tool("test_input_required_result_list_roots", {})
        assert roots.content[0].text == "Client exposed 2 root(s)."
        both = await client.call_tool("test_input_required_result_multi_round", {})
        assert both.content[0].text == "Alice likes green."
        together = await client.call_tool("test_input_required_result_multiple_inputs", {})
        assert together.content[0].text == "All inputs received."
        prompt = await client.get_prompt("test_input_required_result_prompt")
        assert prompt.messages[0].content.text.startswith("Use the following context:")
        defaults = await client.call_tool("test_elicitation_sep1034_defaults", {})
        assert defaults.is_error is False
    schema = next(a[2] for a in cb.asked if a[0] == "elicitation" and "Please provide user" in a[1])
    assert schema["properties"]["age"] == {"type": "integer", "default": 30}
    assert ("sampling", "Capital of France?") in cb.asked and ("roots",) in cb.asked


@pytest.mark.parametrize("mode, version", MODES)
async def test_logging_and_progress_arrive_before_the_result(twin_env, mode, version):
    cb = Callbacks()
    async with cb.client(twin_env, mode, log_level="info") as client:
        if mode == "legacy":
            await client.set_logging_level("info")
        logged = await client.call_tool("test_tool_with_logging", {})
        cb.events.append(("result", logged.content[0].text))

        async def progress(value, total, message):
            cb.events.append(("progress", value))
        done = await client.call_tool("test_tool_with_progress", {}, progress_callback=progress)
        cb.events.append(("result", done.content[0].text))
    assert cb.events == [("log", "Tool execution started"), ("log", "Tool processing data"),
                         ("log", "Tool execution completed"),
                         ("result", "Tool with logging executed successfully"),
                         ("progress", 0), ("progress", 50), ("progress", 100), ("result", cb.events[-1][1])]


async def test_modern_request_without_log_level_gets_no_log_messages(twin_env):
    cb = Callbacks()
    async with cb.client(twin_env, "2026-07-28") as client:
        result = await client.call_tool("test_tool_with_logging", {})
        assert result.content[0].text == "Tool with logging executed successfully"
    assert cb.events == []


@pytest.mark.parametrize("mode, version", MODES)
async def test_every_tool_and_prompt_is_described(twin_env, mode, version):
    async with Client(everything(twin_env), mode=mode) as client:
        tools = (await client.list_tools()).tools
        fixtures = {"test_simple_text", "test_image_content", "test_audio_content", "test_embedded_resource",
                    "test_multiple_content_types", "test_tool_with_logging", "test_tool_with_progress",
                    "test_error_handling", "test_sampling", "test_elicitation",
                    "test_elicitation_sep1034_defaults", "test_elicitation_sep1330_enums",
                    "json_schema_2020_12_tool", "test_x_mcp_header", "test_missing_capability"} | {
            f"test_input_required_result_{n}" for n in ("elicitation", "sampling", "list_roots", "request_state",
                                                        "multiple_inputs", "multi_round", "tampered_state",
                                                        "capabilities")}
        assert fixtures <= {t.name for t in tools}
        assert all(t.description and t.input_schema.get("type") == "object" for t in tools)
        links = (await client.call_tool("test_resource_links", {})).content
        assert [(c.type, str(c.uri)) for c in links] == [("resource_link", "test://static-text"),
                                                         ("resource_link", "test://static-binary")]
        audio = (await client.call_tool("test_audio_content", {})).content[0]
        assert audio.type == "audio" and audio.mime_type == "audio/wav"
        embedded = (await client.call_tool("test_embedded_resource", {})).content[0]
        assert embedded.resource.text == "This is an embedded resource content."
        schema = next(t for t in tools if t.name == "json_schema_2020_12_tool").input_schema
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema" and "$defs" in schema
