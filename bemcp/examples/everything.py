"""Every MCP server feature once: the fixtures the official conformance suite calls.

Run it with ``python -m bemcp.examples.everything`` (stdio). Read it to learn the API:
tools return strings, content blocks or errors; prompts and resources are plain
functions; a handler that takes a ``Context`` can log, report progress and ask the
client (sampling, elicitation, roots), in both protocol eras, with the same code.
"""

import argparse
import asyncio
import base64
from typing import Annotated

from bemcp import (Context, Server, ToolError, audio, embedded_resource, image,
                   resource_link, text, user)
from bemcp.config import add_http_arguments

# A 1x1 red PNG and a minimal WAV, as the suite expects them.
IMAGE = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
AUDIO = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="

server = Server("bemcp-everything", version="1.0.0",
                instructions="Conformance fixtures: every MCP server feature once.")


# -- tools: content of every kind ------------------------------------------------------------

@server.tool
def test_simple_text() -> str:
    """Return one text block."""
    return "This is a simple text response for testing."


@server.tool
def test_image_content():
    """Return one image block."""
    return image(IMAGE, "image/png")


@server.tool
def test_audio_content():
    """Return one audio block."""
    return audio(AUDIO, "audio/wav")


@server.tool
def test_embedded_resource():
    """Return one embedded resource."""
    return embedded_resource("test://embedded-resource", "This is an embedded resource content.",
                             mime_type="text/plain")


@server.tool
def test_multiple_content_types():
    """Return text, an image and an embedded resource together."""
    return [text("Multiple content types test:"), image(IMAGE, "image/png"),
            embedded_resource("test://mixed-content-resource", '{"test": "data", "value": 123}',
                              mime_type="application/json")]


@server.tool
def test_resource_links():
    """Point at resources instead of embedding them."""
    return [resource_link("test://static-text", "static_text", "text/plain"),
            resource_link("test://static-binary", "static_binary", "image/png")]


@server.tool
def test_error_handling() -> str:
    """Fail the way a tool should: a result with isError, not a protocol error."""
    raise ToolError("This tool intentionally returns an error for testing")


@server.tool(input_schema={
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {"address": {"$anchor": "addressDef", "type": "object",
                          "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}},
    "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"},
                   "contactMethod": {"type": "string", "enum": ["phone", "email"]},
                   "phone": {"type": "string"}, "email": {"type": "string"}},
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
})
def json_schema_2020_12_tool(name: str = "", address: dict = None, contactMethod: str = None,
                             phone: str = None, email: str = None) -> str:
    """Keep a hand-written JSON Schema 2020-12 input schema as it is."""
    return f"name={name!r}, address={address!r}, contact={contactMethod or ''}:{phone or email or ''}"


@server.tool
def test_x_mcp_header(region: Annotated[str, {"description": "Mirrored into the Mcp-Param-Region header",
                                              "x-mcp-header": "Region"}] = "<none>") -> str:
    """Echo an argument that HTTP clients also send as a header."""
    return f"region={region}"


# -- tools: logging, progress ------------------------------------------------------------------

@server.tool
async def test_tool_with_logging(ctx: Context) -> str:
    """Send three log messages while running."""
    ctx.log("info", "Tool execution started")
    await asyncio.sleep(0.05)
    ctx.log("info", "Tool processing data")
    await asyncio.sleep(0.05)
    ctx.log("info", "Tool execution completed")
    return "Tool with logging executed successfully"


@server.tool
async def test_tool_with_progress(ctx: Context) -> str:
    """Report progress 0, 50 and 100 of 100."""
    for step in (0, 50, 100):
        ctx.report_progress(step, total=100, message=f"Completed step {step} of 100")
        if step < 100:
            await asyncio.sleep(0.05)
    return str(ctx.progress_token)


@server.tool
async def test_logging_tool(ctx: Context) -> str:
    """Log one message: a 2026-07-28 request without _meta logLevel gets none of it."""
    ctx.log("info", "test_logging_tool ran")
    return "logged"


# -- tools: asking the client --------------------------------------------------------------------

@server.tool
async def test_sampling(prompt: str, ctx: Context) -> str:
    """Ask the client's model to answer a prompt."""
    answer = await ctx.sample(prompt, max_tokens=100)
    return f"LLM response: {answer['content'].get('text')}"


@server.tool
async def test_elicitation(message: str, ctx: Context) -> str:
    """Ask the user for a username and an email address."""
    answer = await ctx.elicit(message, {
        "type": "object",
        "properties": {"username": {"type": "string", "description": "Your username"},
                       "email": {"type": "string", "description": "Your email address"}},
        "required": ["username", "email"]})
    return f"User response: action={answer['action']}, content={answer.get('content')}"


@server.tool
async def test_streaming_elicitation(ctx: Context) -> str:
    """Ask the user one question: a request to the client in the handshake era, an
    input_required result in 2026-07-28 (never a request on the response stream)."""
    answer = await ctx.elicit("What is your name?", {
        "type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}, key="name")
    return f"Hello, {(answer.get('content') or {}).get('name', 'stranger')}!"


@server.tool
async def test_elicitation_sep1034_defaults(ctx: Context) -> str:
    """Ask with a default for every primitive type."""
    answer = await ctx.elicit("Please provide user information", {
        "type": "object",
        "properties": {
            "name": {"type": "string", "default": "John Doe"},
            "age": {"type": "integer", "default": 30},
            "score": {"type": "number", "default": 95.5},
            "status": {"type": "string", "enum": ["active", "inactive", "pending"], "default": "active"},
            "verified": {"type": "boolean", "default": True}},
        "required": []})
    return f"Elicitation result: action={answer['action']}, content={answer.get('content')}"


@server.tool
async def test_elicitation_sep1330_enums(ctx: Context) -> str:
    """Ask with every kind of enum: untitled, titled, legacy, and multi-select."""
    answer = await ctx.elicit("Please select values using different enum schema types", {
        "type": "object",
        "properties": {
            "untitledSingle": {"type": "string", "enum": ["active", "inactive", "pending"]},
            "titledSingle": {"type": "string", "oneOf": [
                {"const": "low", "title": "Low Priority"}, {"const": "medium", "title": "Medium Priority"},
                {"const": "high", "title": "High Priority"}]},
            "legacyEnum": {"type": "string", "enum": ["small", "medium", "large"],
                           "enumNames": ["Small Size", "Medium Size", "Large Size"]},
            "untitledMulti": {"type": "array", "minItems": 1, "maxItems": 3,
                              "items": {"type": "string", "enum": ["read", "write", "execute"]}},
            "titledMulti": {"type": "array", "minItems": 1, "maxItems": 3, "items": {"anyOf": [
                {"const": "feature", "title": "New Feature"}, {"const": "bug", "title": "Bug Fix"},
                {"const": "docs", "title": "Documentation"}]}}},
        "required": []})
    return f"Elicitation completed: action={answer['action']}, content={answer.get('content')}"


@server.tool
async def test_missing_capability(ctx: Context) -> str:
    """Need sampling: a client without it gets error -32021 naming the capability."""
    if not ctx.client_supports("sampling"):
        # The same error ctx.sample() would raise, without asking anything.
        from bemcp import MissingCapability
        raise MissingCapability("sampling", "test_missing_capability")
    return "Client declared sampling capability; proceeding."


# In 2026-07-28 the asks below become input_required rounds; keys name them in inputRequests.
NAME = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
CONFIRM = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


@server.tool
async def test_input_required_result_elicitation(ctx: Context) -> str:
    """Ask the user's name, then greet them."""
    answer = await ctx.elicit("What is your name?", NAME, key="user_name")
    return f"Hello, {(answer.get('content') or {}).get('name', 'stranger')}!"


@server.tool
async def test_input_required_result_sampling(ctx: Context) -> str:
    """Ask the client's model a question."""
    answer = await ctx.sample("What is the capital of France?", max_tokens=100, key="capital_question")
    return f"Model said: {answer['content'].get('text')}"


@server.tool
async def test_input_required_result_list_roots(ctx: Context) -> str:
    """Count the client's roots."""
    roots = await ctx.list_roots(key="client_roots")
    return f"Client exposed {len(roots)} root(s)."


@server.tool
async def test_input_required_result_request_state(ctx: Context) -> str:
    """Ask for a confirmation; the answer comes back with the signed requestState."""
    await ctx.elicit("Please confirm", CONFIRM, key="confirm")
    return "state-ok: confirmation received"


@server.tool
async def test_input_required_result_tampered_state(ctx: Context) -> str:
    """Ask for a confirmation; an altered requestState is refused before this runs again."""
    await ctx.elicit("Please confirm", CONFIRM, key="confirm")
    return "state-ok: confirmation received"


@server.tool
async def test_input_required_result_multiple_inputs(ctx: Context) -> str:
    """Ask three things at once: asks awaited together go out in one round."""
    await asyncio.gather(ctx.elicit("What is your name?", NAME, key="user_name"),
                         ctx.sample("Generate a greeting", max_tokens=50, key="greeting"),
                         ctx.list_roots(key="client_roots"))
    return "All inputs received."


@server.tool
async def test_input_required_result_multi_round(ctx: Context) -> str:
    """Ask one thing, then another: one round each."""
    name = await ctx.elicit("Step 1: What is your name?", NAME, key="step1")
    color = await ctx.elicit("Step 2: What is your favorite color?", {
        "type": "object", "properties": {"color": {"type": "string"}}, "required": ["color"]}, key="step2")
    return f"{name['content']['name']} likes {color['content']['color']}."


@server.tool
async def test_input_required_result_capabilities(ctx: Context) -> str:
    """Ask only for what the client declared it can do."""
    asks = []
    if ctx.client_supports("sampling"):
        asks.append(ctx.sample("Say hello", max_tokens=50, key="sample"))
    if ctx.client_supports("elicitation"):
        asks.append(ctx.elicit("What is your name?", NAME, key="ask"))
    await asyncio.gather(*asks)
    return f"Asked {len(asks)} question(s)."


# -- resources --------------------------------------------------------------------------------------

@server.resource("test://static-text", mime_type="text/plain")
def static_text() -> str:
    """A static text resource."""
    return "This is the content of the static text resource."


@server.resource("test://static-binary", mime_type="image/png")
def static_binary() -> bytes:
    """A static binary resource (a PNG image)."""
    return base64.b64decode(IMAGE)


@server.resource("test://template/{id}/data", mime_type="application/json",
                 completions={"id": lambda value, arguments: [i for i in ("1", "2", "123") if i.startswith(value)]})
def template_data(id: str) -> dict:
    """Data for one id (a URI template)."""
    return {"id": id, "templateTest": True, "data": f"Data for ID: {id}"}


watched = {"content": "Watched resource content"}


@server.resource("test://watched-resource", mime_type="text/plain")
def watched_resource() -> str:
    """A resource to subscribe to; test_update_watched_resource changes it."""
    return watched["content"]


@server.tool
def test_update_watched_resource(content: str) -> str:
    """Change test://watched-resource and tell its subscribers."""
    watched["content"] = content
    server.notify_resource_updated("test://watched-resource")
    return "updated"


# -- prompts ------------------------------------------------------------------------------------------

@server.prompt
def test_simple_prompt() -> str:
    """A prompt without arguments."""
    return "This is a simple prompt for testing."


def complete_arg(value, arguments):
    return [v for v in ("testValue1", "testValue2", "other") if v.startswith(value)]


@server.prompt(completions={"arg1": complete_arg})
def test_prompt_with_arguments(arg1: str, arg2: str) -> str:
    """A prompt with two required arguments.

    Args:
        arg1: First argument.
        arg2: Second argument.
    """
    return f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"


@server.prompt
def test_prompt_with_embedded_resource(resourceUri: str):
    """A prompt that embeds a resource."""
    return [embedded_resource(resourceUri, "Embedded resource content for testing.", mime_type="text/plain"),
            "Please process the embedded resource above."]


@server.prompt
def test_prompt_with_image():
    """A prompt with an image."""
    return [user(image(IMAGE, "image/png")), "Please analyze the image above."]


@server.prompt
async def test_input_required_result_prompt(ctx: Context) -> str:
    """A prompt that asks the user for context first."""
    answer = await ctx.elicit("What context should the prompt use?", {
        "type": "object", "properties": {"context": {"type": "string"}}, "required": ["context"]},
        key="user_context")
    return f"Use the following context: {answer['content']['context']}"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bemcp.examples.everything",
                                     description="Serve every conformance fixture over stdio or HTTP.")
    parser.add_argument("--state-key-file", metavar="PATH",
                        help="key signing 2026-07-28 requestState (default: random per process)")
    parser.add_argument("--max-message-size", type=int, metavar="BYTES", help="largest accepted message")
    add_http_arguments(parser)
    args = parser.parse_args(argv)
    if args.state_key_file:
        try:
            server.use_state_key_file(args.state_key_file)
        except (OSError, ValueError) as exc:
            parser.error(str(exc))
    if args.max_message_size:
        server.config.max_message_size = args.max_message_size
    server.config.update({k: v for k, v in vars(args).items() if k.startswith("http") and v},
                         source="command line")
    server.run()


if __name__ == "__main__":
    main()
