"""Sign in with the local Hub: the OpenID Connect provider that Spaces OAuth talks to.

A Space with ``hf_oauth: true`` gets ``OAUTH_CLIENT_ID``, ``OAUTH_CLIENT_SECRET``,
``OAUTH_SCOPES`` and ``OPENID_PROVIDER_URL`` (the Hub), and gradio's `gr.LoginButton` runs the
authorization-code flow against the Hub through authlib. This module serves the same endpoints
so that the flow, and the access token it yields (which then works as a Hub token for the
signed-in user), run offline against the local server:

- ``GET /.well-known/openid-configuration``: the provider metadata authlib reads;
- ``GET /oauth/authorize``: the consent page. hf.co knows who is logged in; this server has
  no browser sessions, so the page asks for the user's Hub token instead;
- ``POST /oauth/authorize``: checks that token and redirects back with a one-time code;
- ``POST /oauth/token``: exchanges the code (client secret by HTTP Basic or form) for an access
  token and an RS256-signed ID token (``sub``, ``name``, ``preferred_username``, ``nonce``…);
- ``GET /oauth/userinfo`` and ``GET /oauth/jwks``.

Only registered clients (``create_app(oauth_clients={client_id: secret})``) may use it; without
any the routes answer 404. Codes live 5 minutes and work once; access tokens live 8 hours.
Tokens are never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import secrets
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from ._state import base_url, hub
from .errors import HubHTTPError

router = APIRouter()

CODE_TTL = 300
TOKEN_TTL = 8 * 3600


@dataclass(frozen=True)
class _Grant:
    client_id: str
    redirect_uri: str
    user: str
    scope: str
    nonce: str | None
    expires_at: float


@dataclass
class OAuthProvider:
    """Registered clients, the signing key and the outstanding authorization codes."""

    clients: Mapping[str, str]
    codes: dict[str, _Grant] = field(default_factory=dict)
    key: Any = None

    def __post_init__(self) -> None:
        from authlib.jose import JsonWebKey  # gradio[oauth] brings authlib and cryptography

        self.key = JsonWebKey.generate_key("RSA", 2048, is_private=True, options={"kid": "local"})

    def check_client(self, client_id: str, secret: str | None = None) -> None:
        known = self.clients.get(client_id)
        if known is None:
            raise HubHTTPError(400, f"Unknown OAuth client {client_id!r}")
        if secret is not None and not hmac.compare_digest(known.encode(), secret.encode()):
            raise HubHTTPError(401, "Invalid client credentials")

    def public_jwks(self) -> dict[str, Any]:
        jwk = self.key.as_dict(is_private=False)
        return {"keys": [{**jwk, "use": "sig", "alg": "RS256"}]}

    def id_token(self, issuer: str, grant: _Grant, now: int) -> str:
        from authlib.jose import jwt

        claims = {
            "iss": issuer, "aud": grant.client_id, "iat": now, "exp": now + TOKEN_TTL,
            **_profile(issuer, grant.user),
        }  # fmt: skip
        if grant.nonce:
            claims["nonce"] = grant.nonce
        token = jwt.encode({"alg": "RS256", "kid": "local"}, claims, self.key)
        return token.decode() if isinstance(token, bytes) else token


def _provider(request: Request) -> OAuthProvider:
    provider = getattr(request.app.state, "oauth", None)
    if provider is None:
        raise HubHTTPError(404, "OAuth is not enabled on this server")
    return provider


def _profile(issuer: str, user: str) -> dict[str, str]:
    return {
        "sub": hashlib.sha256(user.encode()).hexdigest()[:24],
        "name": user,
        "preferred_username": user,
        "profile": f"{issuer}/{user}",
        "picture": f"{issuer}/avatars/{user}.svg",
    }


@router.get("/.well-known/openid-configuration")
async def metadata(request: Request) -> JSONResponse:
    _provider(request)
    root = base_url(request)
    return JSONResponse({
        "issuer": root,
        "authorization_endpoint": f"{root}/oauth/authorize",
        "token_endpoint": f"{root}/oauth/token",
        "userinfo_endpoint": f"{root}/oauth/userinfo",
        "jwks_uri": f"{root}/oauth/jwks",
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "profile", "email", "read-repos", "write-repos",
                             "manage-repos", "inference-api"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
    })  # fmt: skip


@router.get("/oauth/jwks")
async def jwks(request: Request) -> JSONResponse:
    return JSONResponse(_provider(request).public_jwks())


_FIELDS = ("client_id", "redirect_uri", "scope", "state", "nonce")


@router.get("/oauth/authorize")
async def consent(request: Request) -> HTMLResponse:
    provider = _provider(request)
    query = request.query_params
    if query.get("response_type") != "code":
        raise HubHTTPError(400, "response_type must be 'code'")
    provider.check_client(query.get("client_id", ""))
    _check_redirect(query.get("redirect_uri", ""))
    hidden = "".join(
        f'<input type="hidden" name="{name}" value="{html.escape(query.get(name, ""))}">'
        for name in _FIELDS
    )
    client = html.escape(query.get("client_id", ""))
    scope = html.escape(query.get("scope", ""))
    return HTMLResponse(
        "<!doctype html><title>Authorize</title>"
        f"<h1>Sign in to {client}</h1><p>Scopes: {scope}</p>"
        '<form method="post" action="/oauth/authorize">'
        f"{hidden}"
        '<label>Hub token <input type="password" name="token" id="token" autocomplete="off">'
        '</label> <button type="submit" id="authorize">Authorize</button></form>'
    )


@router.post("/oauth/authorize")
async def authorize(request: Request) -> RedirectResponse:
    provider = _provider(request)
    form = await request.form()
    values = {name: str(form.get(name) or "") for name in (*_FIELDS, "token")}
    provider.check_client(values["client_id"])
    _check_redirect(values["redirect_uri"])
    user = hub(request).auth.user_for(values["token"])
    if user is None:
        raise HubHTTPError(401, "Invalid Hub token: sign-in refused")
    code = secrets.token_urlsafe(24)
    provider.codes[code] = _Grant(
        values["client_id"], values["redirect_uri"], user, values["scope"],
        values["nonce"] or None, time.time() + CODE_TTL,
    )  # fmt: skip
    return RedirectResponse(
        _with_query(values["redirect_uri"], code=code, state=values["state"]), status_code=302
    )


@router.post("/oauth/token")
async def token(request: Request) -> JSONResponse:
    provider = _provider(request)
    form = await request.form()
    client_id, secret = _client_credentials(request, form)
    provider.check_client(client_id, secret)
    if form.get("grant_type") != "authorization_code":
        raise HubHTTPError(400, "grant_type must be 'authorization_code'")
    grant = provider.codes.pop(str(form.get("code") or ""), None)
    if grant is None or grant.expires_at < time.time() or grant.client_id != client_id:
        raise HubHTTPError(400, "Invalid or expired authorization code")
    if form.get("redirect_uri") and form.get("redirect_uri") != grant.redirect_uri:
        raise HubHTTPError(400, "redirect_uri does not match the authorization request")
    access = "hf_oauth_" + secrets.token_urlsafe(32)
    hub(request).auth.grant(access, grant.user, expires_at=time.time() + TOKEN_TTL)
    now = int(time.time())
    return JSONResponse({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": TOKEN_TTL,
        "scope": grant.scope,
        "id_token": provider.id_token(base_url(request), grant, now),
    })  # fmt: skip


@router.get("/oauth/userinfo")
async def userinfo(request: Request) -> JSONResponse:
    _provider(request)
    user = hub(request).auth.require_user(request)
    return JSONResponse(_profile(base_url(request), user))


def _check_redirect(uri: str) -> None:
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise HubHTTPError(400, "redirect_uri must be an absolute http(s) URL")


def _with_query(uri: str, **params: str) -> str:
    parsed = urllib.parse.urlparse(uri)
    query = urllib.parse.parse_qsl(parsed.query, keep_blank_values=True) + list(params.items())
    return urllib.parse.urlunparse(parsed._replace(query=urllib.parse.urlencode(query)))


def _client_credentials(request: Request, form: Any) -> tuple[str, str | None]:
    """client_secret_basic (authlib's default) or client_secret_post."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value).decode()
        except ValueError:
            raise HubHTTPError(401, "Malformed Basic credentials") from None
        client_id, _, secret = decoded.partition(":")
        return urllib.parse.unquote(client_id), urllib.parse.unquote(secret)
    return str(form.get("client_id") or ""), str(form.get("client_secret") or "")
