"""Identities: Hub users via whoami on the local Hub (cached by token digest), else sessions."""

from __future__ import annotations

import pytest

from app.identity import LOCAL, Identities, digest, session_identity
from tests import hub_fixtures

local_hub = hub_fixtures.local_hub


def test_tokens_resolve_to_their_hub_users(local_hub):
    identities = Identities(local_hub.url)
    assert identities.resolve(local_hub.alice, session="s1") == "user:alice"
    assert identities.resolve(local_hub.bob, session="s1") == "user:bob"
    # the same user from another session (another tab, another client) is the same identity
    assert identities.resolve(local_hub.alice, session="s2") == "user:alice"


def test_no_token_or_a_refused_token_is_the_session(local_hub):
    identities = Identities(local_hub.url)
    assert identities.resolve(None, session="tab-1") == session_identity("tab-1")
    assert identities.resolve("", session="tab-1") != identities.resolve("", session="tab-2")
    assert identities.resolve("hf_not_a_token", session="tab-1") == session_identity("tab-1")
    assert identities.resolve(None, session=None) == LOCAL
    assert "tab-1" not in session_identity("tab-1")  # only a digest of the session is kept


def test_whoami_is_cached_by_token_digest_only(local_hub):
    identities = Identities(local_hub.url)
    control = local_hub.control
    control.reset()
    for _ in range(5):
        assert identities.user(local_hub.alice) == "alice"
    assert sum(n for key, n in control.requests.items() if "whoami" in key) == 1
    assert local_hub.alice not in repr(identities._cache)
    assert digest(local_hub.alice) in identities._cache


def test_an_unreachable_hub_falls_back_to_the_session_and_is_not_cached():
    calls = []

    def whoami(token: str) -> str | None:
        calls.append(1)
        raise ConnectionError("the Hub is down")

    identities = Identities(whoami=whoami)
    assert identities.resolve("hf_x", session="s") == session_identity("s")
    assert identities.resolve("hf_x", session="s") == session_identity("s")
    assert len(calls) == 2


@pytest.mark.parametrize("request_obj", [None, object()])
def test_of_request_without_a_session_is_local(request_obj):
    assert Identities(whoami=lambda t: None).of_request(None, request_obj) == LOCAL


class Relayed:
    """A request as gradio's MCP server relays it: one shared session, the caller's headers."""

    session_hash = "the-mcp-servers-own-client"

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


def test_mcp_sessions_are_separate_although_gradio_relays_them_through_one_client():
    identities = Identities(whoami=lambda token: None)
    first = identities.of_request(None, Relayed({"mcp-session-id": "a1"}))
    second = identities.of_request(None, Relayed({"mcp-session-id": "b2"}))
    assert first != second
    assert first == identities.of_request(None, Relayed({"mcp-session-id": "a1"}))
    assert identities.of_request(None, Relayed({})) == session_identity(Relayed.session_hash)
    stateless = Relayed({"mcp-protocol-version": "2025-06-18"})  # gradio's MCP: no session id
    assert identities.of_request(None, stateless) != identities.of_request(None, stateless)
    assert session_identity(Relayed.session_hash) != identities.of_request(None, stateless)
