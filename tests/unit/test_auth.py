"""Token verification: the fast path for plain tokens never accepts what PyJWT
would refuse, and accepts plain tokens with exactly PyJWT's claims."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any

import jwt
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.application.auth import AuthError, Principal, TokenSigner, bearer_token

SECRET = "unit-secret-0123456789-0123456789-abcdef"
OTHER = "another-secret-0123456789-0123456789-xyz"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pyjwt_accepts(token: str) -> dict[str, Any] | None:
    try:
        claims: dict[str, Any] = jwt.decode(
            token, SECRET, algorithms=["HS256"], options={"require": ["sub", "exp"]}
        )
    except jwt.InvalidTokenError:
        return None
    return claims


now = int(time.time())
claim_values = st.one_of(
    st.integers(now - 100_000, now + 100_000),
    st.floats(now - 1000, now + 1000, allow_nan=False),
    st.text(max_size=5),
    st.none(),
    st.booleans(),
)
plain_claims = st.fixed_dictionaries(
    {
        "sub": st.one_of(st.text(max_size=8), st.integers(0, 9)),
        "exp": st.one_of(st.integers(now - 100, now + 100_000), st.floats(now - 5, now + 5)),
    },
    optional={
        "iat": st.integers(now - 1000, now + 1000),
        "jti": st.one_of(st.text(max_size=6), st.integers(0, 9)),
        "roles": st.lists(st.sampled_from(["user", "service", "auditor", "root"]), max_size=3),
    },
)
claims_strategy = st.one_of(
    plain_claims,
    st.fixed_dictionaries(
        {},
        optional={
            "sub": st.one_of(st.text(min_size=0, max_size=8), st.integers(-(2**40), 2**40)),
            "exp": claim_values,
            "iat": claim_values,
            "nbf": claim_values,
            "aud": st.one_of(st.text(max_size=4), st.lists(st.text(max_size=3), max_size=2)),
            "jti": st.one_of(st.text(max_size=4), st.integers(0, 2**40)),
            "roles": st.one_of(
                st.lists(st.sampled_from(["user", "service", "auditor", "root"]), max_size=3),
                st.text(max_size=4),
            ),
        },
    ),
)
headers_strategy = st.one_of(
    st.just({"alg": "HS256", "typ": "JWT"}),
    st.just({"alg": "HS256"}),
    st.just({"alg": "none"}),
    st.just({"alg": "HS512", "typ": "JWT"}),
    st.just({"alg": "HS256", "typ": "JWT", "crit": ["exp"]}),
    st.just({"alg": "HS256", "kid": "k1"}),
)


@settings(max_examples=400, deadline=None)
@given(
    header=headers_strategy,
    claims=claims_strategy,
    key=st.sampled_from([SECRET, OTHER]),
    tamper=st.sampled_from(["none", "payload", "signature", "padding", "junk", "parts"]),
)
def test_the_fast_path_accepts_only_what_pyjwt_accepts_with_the_same_claims(
    header: dict[str, Any], claims: dict[str, Any], key: str, tamper: str
) -> None:
    head = b64(orjson.dumps(header))
    body = b64(orjson.dumps(claims))
    sig = b64(hmac.new(key.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
    if tamper == "payload":
        body = b64(orjson.dumps({**claims, "sub": "mallory"}))
    elif tamper == "signature":
        sig = sig[:-2] + ("AA" if not sig.endswith("AA") else "BB")
    elif tamper == "padding":
        sig += "=="
    elif tamper == "junk":
        sig = sig[:5] + "!" + sig[5:]
    token = f"{head}.{body}.{sig}" if tamper != "parts" else f"{head}.{body}.{sig}.x"

    signer = TokenSigner(SECRET)
    fast = signer._plain_claims(token)
    reference = pyjwt_accepts(token)
    if fast is not None:
        assert reference == fast
    try:
        verdict: Principal | None = signer.verify(token)
    except AuthError:
        verdict = None
    if reference is None:
        assert verdict is None
    elif verdict is not None:
        assert verdict.user_id == reference["sub"]
        assert verdict.exp == int(reference["exp"])


def test_minted_tokens_take_the_fast_path_and_give_the_same_principal() -> None:
    signer = TokenSigner(SECRET)
    token = signer.mint("alice", ["service", "user"])
    fast = signer._plain_claims(token)
    assert fast is not None and fast == pyjwt_accepts(token)
    assert signer.verify(token) == Principal(
        "alice", frozenset({"service", "user"}), exp=fast["exp"]
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda t: jwt.encode({"sub": "a", "exp": t - 1}, SECRET, algorithm="HS256"),
        lambda t: jwt.encode({"sub": "a", "exp": t + 60}, OTHER, algorithm="HS256"),
        lambda t: jwt.encode({"sub": "a"}, SECRET, algorithm="HS256"),
        lambda t: jwt.encode({"sub": "a", "exp": t + 60, "nbf": t + 30}, SECRET, algorithm="HS256"),
        lambda t: b64(b'{"alg":"none"}') + "." + b64(b'{"sub":"a","exp":%d}' % (t + 60)) + ".",
    ],
    ids=["expired", "wrong key", "no exp", "not yet valid", "unsigned"],
)
def test_bad_tokens_are_refused(make: Callable[[int], str]) -> None:
    # Made when the test runs, not when it is collected: "not yet valid" would
    # otherwise become valid in a suite that runs longer than its 30 s.
    token = make(int(time.time()))
    with pytest.raises(AuthError):
        TokenSigner(SECRET).verify(token)


def test_a_token_with_non_ascii_characters_is_refused_as_unauthenticated() -> None:
    signer = TokenSigner("k" * 32)
    for token in ("abc\udcff\udcfe.def.ghi", "ñ.ñ.ñ"):
        with pytest.raises(AuthError):
            signer.verify(token)
    with pytest.raises(AuthError):
        bearer_token("Bearer abc\udcffdef")


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "a\x00b", "exp": 4_000_000_000},
        {"sub": "x\ud800y", "exp": 4_000_000_000},
        {"sub": "a", "exp": 2**63},
        {"sub": "a", "exp": 1e21},
    ],
    ids=["nul-subject", "lone-surrogate-subject", "exp-past-64-bits", "float-exp-past-64-bits"],
)
def test_a_token_whose_claims_cannot_be_recorded_is_refused(claims: dict[str, Any]) -> None:
    """Its subject becomes an owner and its expiry is recorded with the
    socket's authentication: what no store can hold is refused with the token,
    by either path (PyJWT's JSON decoder lets an escaped lone surrogate
    through; orjson's fast path, a NUL)."""
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    with pytest.raises(AuthError):
        TokenSigner(SECRET).verify(token)


@pytest.mark.parametrize(
    ("user", "ttl"), [("", 60), ("a\x00b", 60), ("alice", 2**63)], ids=["empty", "nul", "ttl"]
)
def test_mint_refuses_a_token_the_server_would_refuse(user: str, ttl: int) -> None:
    with pytest.raises(ValueError):
        TokenSigner(SECRET).mint(user, ttl=ttl)


# Shapes a token's claims take to reach each path: the fast path's plain
# shape, and PyJWT's (an ``nbf`` in the past is what the fast path hands on).
PATHS = {"fast path": {}, "pyjwt": {"nbf": 0}}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "roles",
    [["admin"], ["Auditor"], ["user", "admin"], ["service", "USER"], [], ["auditor", ""]],
    ids=["admin", "miscapitalised", "user-and-admin", "service-and-USER", "empty", "blank"],
)
def test_a_token_whose_roles_name_a_role_the_server_does_not_know_is_refused(
    roles: list[str], path: str
) -> None:
    """Not read as the default ``user``: a token meant for a narrower role
    would get the right to write."""
    claims = {"sub": "alice", "exp": int(time.time()) + 600, "roles": roles, **PATHS[path]}
    signer = TokenSigner(SECRET)
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    assert (signer._plain_claims(token) is not None) == (path == "fast path")
    with pytest.raises(AuthError, match="role"):
        signer.verify(token)


@pytest.mark.parametrize(
    "roles",
    [["user"], ["service"], ["auditor"], ["user", "service", "auditor"], ["user", "user"]],
)
def test_a_token_naming_known_roles_gets_exactly_them(roles: list[str]) -> None:
    token = jwt.encode(
        {"sub": "alice", "exp": int(time.time()) + 600, "roles": roles}, SECRET, algorithm="HS256"
    )
    assert TokenSigner(SECRET).verify(token).roles == frozenset(roles)


def test_a_token_without_roles_is_a_user() -> None:
    token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")
    assert TokenSigner(SECRET).verify(token).roles == frozenset({"user"})


@pytest.mark.parametrize(
    "dates",
    [
        lambda t: {"exp": str(t + 600)},
        lambda t: {"exp": t + 600, "iat": str(t - 10)},
        lambda t: {"exp": t + 600, "nbf": str(t - 10)},
        lambda t: {"exp": t + 600, "iat": True},
        lambda t: {"exp": t + 600, "nbf": False},
    ],
    ids=["string-exp", "string-iat", "string-nbf", "bool-iat", "bool-nbf"],
)
def test_a_date_claim_that_is_not_a_json_number_is_refused(
    dates: Callable[[int], dict[str, Any]],
) -> None:
    """RFC 7519 makes exp, nbf and iat JSON numbers; PyJWT's int() would take
    a numeric string or a bool."""
    token = jwt.encode({"sub": "alice", **dates(int(time.time()))}, SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match="must be a number"):
        TokenSigner(SECRET).verify(token)


def test_a_fractional_exp_is_a_number_and_its_whole_seconds_are_the_expiry() -> None:
    exp = int(time.time()) + 600
    token = jwt.encode({"sub": "alice", "exp": exp + 0.5}, SECRET, algorithm="HS256")
    assert TokenSigner(SECRET).verify(token).exp == exp


@pytest.mark.parametrize("roles", [[], ["admin"], ["Auditor"]], ids=["empty", "admin", "caps"])
def test_mint_refuses_roles_the_server_would_refuse(roles: list[str]) -> None:
    with pytest.raises(ValueError, match="role"):
        TokenSigner(SECRET).mint("alice", roles)
