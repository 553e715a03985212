"""The app as an MCP server: the `mcp` package's own client against the launched demo app
(``python -m app --demo`` on 127.0.0.1, whose launch enables Gradio's MCP server)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

pytest.importorskip("mcp")

from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

pytestmark = pytest.mark.slow

from tests.helpers.demo_app import RECIPE, TOKEN  # noqa: E402

TOOLS = ("search_models", "check", "merge", "evaluate", "push", "job_status")
# handlers the UI wires but no script or agent should call
UI_ONLY = ("form_to_yaml", "yaml_to_form", "validate_recipe", "validate_push", "preview_check",
           "method_changed", "add_model", "on_key_up", "suggest")  # fmt: skip


def with_session(url: str, work: Callable[[ClientSession], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with (
            streamable_http_client(url) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            return await work(session)

    return asyncio.run(main())


@pytest.fixture(scope="module")
def mcp_url(running_app) -> str:
    return f"{running_app.url}/gradio_api/mcp/"


@pytest.fixture(scope="module")
def tools(mcp_url) -> dict[str, Any]:
    async def work(session: ClientSession) -> Any:
        return (await session.list_tools()).tools

    return {tool.name: tool for tool in with_session(mcp_url, work)}


def test_the_api_endpoints_are_tools_and_ui_helpers_are_not(tools):
    assert set(TOOLS) <= set(tools)
    assert not set(UI_ONLY) & set(tools)


@pytest.mark.parametrize("name", TOOLS)
def test_each_tool_has_a_description_and_typed_documented_parameters(tools, name):
    tool = tools[name]
    assert len(tool.description) > 30, tool.description
    assert not tool.description.startswith("API "), tool.description  # written for a reader
    properties = tool.inputSchema["properties"]
    assert properties, tool.inputSchema
    for parameter, schema in properties.items():
        typed = [schema, *schema.get("oneOf", []), *schema.get("anyOf", [])]
        assert any(s.get("type") or s.get("enum") for s in typed), (parameter, schema)
        assert len(schema.get("description", "")) > 10, (name, parameter, schema)


def test_parameter_types_follow_the_inputs(tools):
    check = tools["check"].inputSchema
    assert check["properties"]["recipe"]["type"] == "string"
    assert "recipe" in check["required"]
    evaluate = tools["evaluate"].inputSchema["properties"]
    assert evaluate["plot"]["type"] == "boolean"
    assert evaluate["limit"]["type"] == "integer"  # gr.Number(precision=0)
    assert "demo" in evaluate["suite"]["enum"]
    merge = tools["merge"].inputSchema["properties"]
    assert set(merge["soup_metric"]["enum"]) == {"loss", "exact_match", "multiple_choice"}
    push = tools["push"].inputSchema["properties"]
    assert push["private"]["type"] == push["exist_ok"]["type"] == "boolean"


def test_the_tools_query_selects_the_six_tools(mcp_url):
    async def work(session: ClientSession) -> Any:
        return (await session.list_tools()).tools

    selected = with_session(mcp_url + "?tools=" + ",".join(TOOLS), work)
    assert sorted(tool.name for tool in selected) == sorted(TOOLS)


def test_check_a_demo_recipe_over_mcp(mcp_url):
    async def work(session: ClientSession) -> Any:
        good = await session.call_tool("check", {"recipe": RECIPE, "token": TOKEN})
        bad = await session.call_tool(
            "check", {"recipe": RECIPE.replace("task_arithmetic", "tsk_arithmetic"), "token": ""}
        )
        return good, bad

    good, bad = with_session(mcp_url, work)
    assert not good.isError, good.content
    report = good.content[0].text
    assert "mergeable" in report
    assert "NOT" not in report
    assert "demo/tiny-math" in report
    assert bad.isError
    assert "tsk_arithmetic" in bad.content[0].text  # the user's error, not a generic failure
