"""Tokens and roles: HS256 JWTs with ``sub``, ``exp`` and optional ``roles``.

Without SESSIOND_SECRET, ``serve`` and ``token`` share a key file created on
first use beside the store (``sessiond.key``, mode 0600), so tokens minted on
the same machine work with no set-up. Nothing unsigned is ever accepted. See
docs/adr/0005-sign-tokens-with-a-shared-key-and-three-roles.md.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt

ROLE_USER = "user"
ROLE_SERVICE = "service"
ROLE_AUDITOR = "auditor"
ROLES = (ROLE_USER, ROLE_SERVICE, ROLE_AUDITOR)
KEY_FILE_NAME = "sessiond.key"
ALGORITHM = "HS256"


class AuthError(Exception):
    """A token is missing, malformed, expired or badly signed."""


@dataclass(frozen=True)
class Principal:
    user_id: str
    roles: frozenset[str]

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


def load_or_create_key(directory: Path) -> str:
    """The shared signing key in ``directory``, created (0600) on first use."""
    path = directory / KEY_FILE_NAME
    try:
        key = path.read_text().strip()
        if key:
            return key
    except FileNotFoundError:
        pass
    directory.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # Another process made it first: use theirs.
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


class TokenSigner:
    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("the signing secret must not be empty")
        self._secret = secret
        self._verified: dict[str, tuple[Principal, float]] = {}

    def mint(self, user_id: str, roles: list[str] | None = None, ttl: int = 3600) -> str:
        roles = list(roles or [ROLE_USER])
        unknown = [r for r in roles if r not in ROLES]
        if unknown:
            raise ValueError(f"unknown role(s) {unknown}; roles are {', '.join(ROLES)}")
        if ttl <= 0:
            raise ValueError("ttl must be a positive number of seconds")
        now = int(time.time())
        claims = {"sub": user_id, "iat": now, "exp": now + ttl, "roles": roles}
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    # Verified tokens, kept until they expire: a worker posting progress sends
    # the same token thousands of times, and HMAC-checking it each time was
    # about 5% of the server's CPU per event (bench/, issue 5).
    VERIFIED_CACHE_SIZE = 4096

    def verify(self, token: object) -> Principal:
        if not isinstance(token, str) or not token:
            raise AuthError("missing token")
        hit = self._verified.get(token)
        if hit is not None:
            principal, expires = hit
            if time.time() < expires:
                return principal
            del self._verified[token]
        principal, expires = self._verify(token)
        if len(self._verified) >= self.VERIFIED_CACHE_SIZE:
            self._verified.pop(next(iter(self._verified)))
        self._verified[token] = (principal, expires)
        return principal

    def _verify(self, token: str) -> tuple[Principal, float]:
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
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise AuthError("token has no subject")
        raw_roles = claims.get("roles", [ROLE_USER])
        if not isinstance(raw_roles, list) or not all(isinstance(r, str) for r in raw_roles):
            raise AuthError("roles must be a list of strings")
        roles = frozenset(r for r in raw_roles if r in ROLES) or frozenset({ROLE_USER})
        return Principal(sub, roles), float(claims["exp"])


def bearer_token(header: str | None) -> str:
    if not header:
        raise AuthError("missing Authorization header")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("Authorization must be 'Bearer <token>'")
    return token.strip()
