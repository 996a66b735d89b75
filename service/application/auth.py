"""Tokens and roles: HS256 JWTs with ``sub``, ``exp`` and optional ``roles``.

Without SESSIOND_SECRET, ``serve`` and ``token`` share a key file created on
first use beside the store (``sessiond.key``, mode 0600), so tokens minted on
the same machine work with no set-up. Nothing unsigned is ever accepted. See
docs/adr/0005-sign-tokens-with-a-shared-key-and-three-roles.md and
docs/adr/0016-verify-plain-tokens-on-a-checked-fast-path.md.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import orjson

ROLE_USER = "user"
ROLE_SERVICE = "service"
ROLE_AUDITOR = "auditor"
ROLES = (ROLE_USER, ROLE_SERVICE, ROLE_AUDITOR)
KEY_FILE_NAME = "sessiond.key"
ALGORITHM = "HS256"
# The longest subject, in UTF-8 bytes: the subject is the owner column of the
# sessions table, indexed with the creation time and the session ID for the
# list, and PostgreSQL's index rows hold 2704 bytes. A longer one stalled the
# projection for every user. (OpenID Connect's own ``sub`` is at most 255.)
MAX_SUBJECT_BYTES = 1024


class AuthError(Exception):
    """A token is missing, malformed, expired or badly signed."""


@dataclass(frozen=True)
class Principal:
    """Who a token speaks for, and until when: ``exp`` is the token's expiry
    in Unix seconds (None for a principal no token stands behind)."""

    user_id: str
    roles: frozenset[str]
    exp: int | None = None

    @property
    def is_service(self) -> bool:
        return ROLE_SERVICE in self.roles

    @property
    def is_auditor(self) -> bool:
        return ROLE_AUDITOR in self.roles

    @property
    def can_write(self) -> bool:
        """Auditors read everything and write nothing."""
        return ROLE_USER in self.roles or ROLE_SERVICE in self.roles

    def can_read(self, owner: str) -> bool:
        return self.user_id == owner or self.is_service or self.is_auditor

    def can_write_to(self, owner: str) -> bool:
        return (self.user_id == owner and ROLE_USER in self.roles) or self.is_service

    def can_end(self, owner: str) -> bool:
        """Ending a session is its owner's alone: a ``service`` writes to any
        session (tasks, progress, messages) but ends none but its own."""
        return self.user_id == owner and self.can_write


class KeyFileError(Exception):
    """The shared key file is missing, empty or unreadable."""


def read_key(directory: Path) -> str:
    """The shared signing key that ``serve`` made in ``directory``.

    ``sessiond token`` reads it and never makes one: a key it made would sign
    tokens no running server accepts ("Signature verification failed").
    """
    path = directory / KEY_FILE_NAME
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        raise KeyFileError(
            f"no key file at {path}: `sessiond serve` makes it beside its store on first "
            "start (give the same --store), or set SESSIOND_SECRET"
        ) from None
    except OSError as e:
        raise KeyFileError(f"cannot read the key file {path}: {e.strerror}") from None
    if not key:
        raise KeyFileError(f"the key file {path} is empty")
    return key


def load_or_create_key(directory: Path) -> str:
    """The shared signing key in ``directory``, created (0600) on first use
    (by ``serve`` only)."""
    path = directory / KEY_FILE_NAME
    try:
        return read_key(directory)
    except KeyFileError:
        if path.exists():
            raise
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # Another process made it first: use theirs.
        return read_key(directory)
    except OSError as e:
        raise KeyFileError(f"cannot create the key file {path}: {e.strerror}") from None
    key = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


class TokenSigner:
    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("the signing secret must not be empty")
        self._secret = secret
        self._key = secret.encode()
        self._verified: dict[str, Principal] = {}

    def mint(self, user_id: str, roles: list[str] | None = None, ttl: int = 3600) -> str:
        # Only the roles verify() accepts: a token naming none, or one it does
        # not know, would be refused by every server.
        roles = [ROLE_USER] if roles is None else list(roles)
        if not roles:
            raise ValueError(f"a token names at least one role; roles are {', '.join(ROLES)}")
        unknown = [r for r in roles if r not in ROLES]
        if unknown:
            raise ValueError(f"unknown role(s) {unknown}; roles are {', '.join(ROLES)}")
        if ttl <= 0:
            raise ValueError("ttl must be a positive number of seconds")
        if not user_id or not _recordable(user_id):
            raise ValueError("the user must be a non-empty string with no NUL or lone surrogate")
        if len(user_id.encode()) > MAX_SUBJECT_BYTES:
            raise ValueError(f"the user must be at most {MAX_SUBJECT_BYTES} bytes of UTF-8")
        now = int(time.time())
        if now + ttl > MAX_EXP:
            raise ValueError(f"ttl must be at most {MAX_EXP - now} seconds (64 bits of expiry)")
        claims = {"sub": user_id, "iat": now, "exp": now + ttl, "roles": roles}
        import jwt  # PyJWT (with the email parser it loads) only when it signs or decodes

        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    # Verified tokens, kept until they expire: a worker posting progress sends
    # the same token thousands of times, and HMAC-checking it each time was
    # about 5% of the server's CPU per event (bench/).
    VERIFIED_CACHE_SIZE = 4096

    def verify(self, token: object) -> Principal:
        if not isinstance(token, str) or not token:
            raise AuthError("missing token")
        if not token.isascii():
            raise AuthError("the token is not a JWT (it has non-ASCII characters)")
        hit = self._verified.get(token)
        if hit is not None:
            if hit.exp is not None and time.time() < hit.exp:
                return hit
            del self._verified[token]
        principal = self._verify(token)
        if len(self._verified) >= self.VERIFIED_CACHE_SIZE:
            self._verified.pop(next(iter(self._verified)))
        self._verified[token] = principal
        return principal

    def _verify(self, token: str) -> Principal:
        claims = self._plain_claims(token)
        if claims is None:
            claims = self._pyjwt_claims(token)
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise AuthError("token has no subject")
        if not _recordable(sub):
            raise AuthError(
                "the token's subject has a NUL or a lone surrogate, which no store can hold"
            )
        if len(sub.encode()) > MAX_SUBJECT_BYTES:
            raise AuthError(f"the token's subject is longer than {MAX_SUBJECT_BYTES} bytes")
        roles = _roles(claims.get("roles", [ROLE_USER]))
        # RFC 7519 makes each date a JSON number; PyJWT judges them with
        # int(), which takes a numeric string or a bool too.
        for name in _DATE_CLAIMS:
            if name in claims and not _is_number(claims[name]):
                raise AuthError(f"the token's {name} must be a number of seconds")
        # PyJWT judges ``exp`` by its whole seconds (int()), and the fast path
        # takes whole numbers only: the whole seconds are the token's expiry.
        exp = int(claims["exp"])
        if exp > MAX_EXP:
            # A socket's authentication records it: it must be a 64-bit integer.
            raise AuthError("the token's expiry is past what can be recorded (64 bits)")
        return Principal(sub, roles, exp=exp)

    def _plain_claims(self, token: str) -> dict[str, Any] | None:
        """The claims of a token of the plain shape this service mints, checked
        in a few microseconds; None for anything else, which PyJWT then judges.

        Plain: header exactly ``{"alg": "HS256"[, "typ": "JWT"]}``, a valid
        HS256 signature, ``exp`` in the future and ``iat`` (if any) not, both
        whole numbers, ``sub`` and ``jti`` (if any) strings, and no ``nbf``,
        ``aud`` or ``iss``. Every such token
        is one PyJWT accepts with the same claims (a test compares them); a
        token this path does not accept is never refused here, only handed on.
        New tokens per connection made PyJWT about 7% of the server's CPU per
        handshake (bench/).
        """
        parts = token.split(".")
        if len(parts) != 3:
            return None
        header_b64, payload_b64, signature_b64 = parts
        try:
            header = orjson.loads(_b64decode(header_b64))
            signature = _b64decode(signature_b64)
        except (ValueError, orjson.JSONDecodeError):
            return None
        if header not in _PLAIN_HEADERS:
            return None
        expected = hmac.new(
            self._key, f"{header_b64}.{payload_b64}".encode("ascii", "replace"), hashlib.sha256
        ).digest()
        if not hmac.compare_digest(expected, signature):
            return None
        try:
            claims = orjson.loads(_b64decode(payload_b64))
        except (ValueError, orjson.JSONDecodeError):
            return None
        if not isinstance(claims, dict) or _UNPLAIN_CLAIMS & claims.keys():
            return None
        # PyJWT is asked to require sub and exp: a token without either is
        # left to it, to be refused there with its own reason.
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or not isinstance(claims.get("jti", ""), str):
            return None
        now = time.time()
        exp, iat = claims.get("exp"), claims.get("iat", 0)
        if not _is_whole(exp) or not _is_whole(iat) or exp <= now or iat > now:
            return None
        return claims

    def _pyjwt_claims(self, token: str) -> dict[str, Any]:
        import jwt

        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={"require": ["sub", "exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.InvalidTokenError as e:
            raise AuthError(f"invalid token: {e}") from None
        return dict(claims)


# The latest expiry a token may have: the connection's events record it.
MAX_EXP = 2**63 - 1

_PLAIN_HEADERS = ({"alg": ALGORITHM, "typ": "JWT"}, {"alg": ALGORITHM})
_UNPLAIN_CLAIMS = frozenset({"nbf", "aud", "iss"})
_DATE_CLAIMS = ("exp", "nbf", "iat")


_B64URL = re.compile(r"[A-Za-z0-9_-]+")


def _b64decode(segment: str) -> bytes:
    if not _B64URL.fullmatch(segment):
        raise ValueError("not unpadded base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def utf8_text(text: str) -> bool:
    """Whether ``text`` can be written out as UTF-8, as orjson must: JSON's
    standard library decodes an escaped lone surrogate, which cannot."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _recordable(text: str) -> bool:
    """Whether ``text`` can be recorded as it stands: UTF-8, and no NUL
    (PostgreSQL's text columns refuse it, and the subject is the owner column
    of the sessions table)."""
    return "\x00" not in text and utf8_text(text)


def _is_whole(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    """A JSON number: an int or a finite float, never a bool or a string."""
    return _is_whole(value) or (isinstance(value, float) and math.isfinite(value))


def _roles(raw: object) -> frozenset[str]:
    """The roles a token's ``roles`` claim names. A role this server does not
    know (a misspelling, another system's ``admin``) is refused, never read
    as the default ``user``: that would give a token meant for a narrower
    role the right to write. So is a list naming none: the default is for a
    token without the claim."""
    if not isinstance(raw, list) or not all(isinstance(r, str) for r in raw):
        raise AuthError("roles must be a list of strings")
    if not raw:
        raise AuthError(f"roles names no role; roles are {', '.join(ROLES)}")
    unknown = [r for r in raw if r not in ROLES]
    if unknown:
        named = ", ".join(repr(r[:40]) for r in unknown[:3])
        raise AuthError(f"unknown role(s) {named}; roles are {', '.join(ROLES)}")
    return frozenset(raw)


def bearer_token(header: str | None) -> str:
    if not header:
        raise AuthError("missing Authorization header")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("Authorization must be 'Bearer <token>'")
    token = token.strip()
    if not token.isascii():
        # A JWT is base64url and dots; aiohttp hands bytes it cannot decode on
        # as surrogates, which no JWT library can even encode back.
        raise AuthError("the token is not a JWT (it has non-ASCII characters)")
    return token
