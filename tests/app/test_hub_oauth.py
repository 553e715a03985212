"""The local Hub as an OpenID Connect provider, driven by authlib's real OAuth 2 client."""

from __future__ import annotations

import re
import urllib.parse

import httpx
import pytest

pytest.importorskip("authlib")
from authlib.integrations.httpx_client import OAuth2Client
from authlib.jose import JsonWebKey, jwt

from app.hub_server import running_server

REDIRECT = "http://127.0.0.1:9/login/callback?_target_url=%2F"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    data = tmp_path_factory.mktemp("oauth-hub")
    with running_server(data, tokens={"hf_alice": "alice"}, oauth_clients={"app": "s3cret"}) as url:
        yield url


def _metadata(hub: str) -> dict:
    return httpx.get(hub + "/.well-known/openid-configuration").json()


def _consent(hub: str, client: OAuth2Client, *, token: str) -> httpx.Response:
    """Open the consent page, then submit its form with ``token`` as the user would."""
    url, _ = client.create_authorization_url(_metadata(hub)["authorization_endpoint"], nonce="n-1")
    page = httpx.get(url)
    assert page.status_code == 200
    fields = dict(re.findall(r'name="(\w+)" value="([^"]*)"', page.text))
    fields = {k: v.replace("&amp;", "&") for k, v in fields.items()}
    return httpx.post(hub + "/oauth/authorize", data={**fields, "token": token})


def _client(**extra: str) -> OAuth2Client:
    return OAuth2Client("app", "s3cret", scope="openid profile write-repos",
                        redirect_uri=REDIRECT, **extra)  # fmt: skip


def test_code_flow_yields_a_signed_id_token_and_a_working_hub_token(hub):
    client = _client()
    answer = _consent(hub, client, token="hf_alice")
    assert answer.status_code == 302
    location = answer.headers["location"]
    assert location.startswith("http://127.0.0.1:9/login/callback?_target_url=%2F&code=")

    token = client.fetch_token(_metadata(hub)["token_endpoint"], authorization_response=location)
    keys = JsonWebKey.import_key_set(httpx.get(hub + "/oauth/jwks").json())
    claims = jwt.decode(token["id_token"], keys)
    claims.validate()
    assert claims["iss"] == hub
    assert claims["aud"] == "app"
    assert claims["nonce"] == "n-1"
    assert claims["preferred_username"] == "alice"

    access = token["access_token"]
    assert access.startswith("hf_oauth_")
    bearer = {"authorization": f"Bearer {access}"}
    assert httpx.get(hub + "/api/whoami-v2", headers=bearer).json()["name"] == "alice"
    assert httpx.get(hub + "/oauth/userinfo", headers=bearer).json()["name"] == "alice"


def test_codes_work_once_and_only_for_their_client(hub):
    client = _client()
    location = _consent(hub, client, token="hf_alice").headers["location"]
    code = urllib.parse.parse_qs(urllib.parse.urlparse(location).query)["code"][0]
    endpoint = hub + "/oauth/token"
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    wrong_secret = httpx.post(endpoint, data=form, auth=("app", "nope"))
    assert wrong_secret.status_code == 401
    first = httpx.post(endpoint, data=form, auth=("app", "s3cret"))
    assert first.status_code == 200
    again = httpx.post(endpoint, data=form, auth=("app", "s3cret"))
    assert again.status_code == 400
    assert "expired authorization code" in again.text


def test_consent_refuses_a_bad_token_and_unknown_clients(hub):
    assert _consent(hub, _client(), token="hf_wrong").status_code == 401
    unknown = OAuth2Client("other", "x", scope="openid", redirect_uri=REDIRECT)
    url, _ = unknown.create_authorization_url(hub + "/oauth/authorize")
    assert httpx.get(url).status_code == 400


def test_oauth_is_off_unless_clients_are_registered(tmp_path):
    with running_server(tmp_path, tokens={"hf_alice": "alice"}) as url:
        assert httpx.get(url + "/.well-known/openid-configuration").status_code == 404
