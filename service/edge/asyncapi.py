"""The WebSocket protocol as an AsyncAPI 3 document, generated from the one
schema of the edge (service/edge/schema.py): the channel ``/v1/ws`` with its
query, every frame a client sends and every frame the server sends, the
lifecycle they walk and the close codes. Nothing here is written by hand
that the code also says: frames are the schema's Structs, states are the
lifecycle class's, close codes are service/edge/effects.py's."""

from __future__ import annotations

from typing import Any

import msgspec

from domain.connection import Connection
from domain.lifecycle import initial_state, state_values
from service.edge.effects import Close
from service.edge.schema import (
    SERVER_FRAMES,
    AuthFrame,
    MessageFrame,
    SocketQuery,
    json_value_schema,
)

COMPONENTS = "#/components/schemas/{name}"

# What each close code says (docs/PROTOCOL.md); the codes are Close's.
CLOSE_MEANINGS = {
    Close.NORMAL: "normal",
    Close.GOING_AWAY: "server shutting down (or the client going away)",
    Close.PROTOCOL_ERROR: "protocol error at the WebSocket layer",
    Close.ABNORMAL: "dropped (recorded, never sent)",
    Close.INVALID_DATA: "invalid UTF-8 at the WebSocket layer",
    Close.TOO_LARGE: "frame too large",
    Close.INTERNAL: "internal error",
    Close.TRY_AGAIN_LATER: "try again later (the store is down)",
    Close.PROTOCOL: "protocol error (e.g. repeated bad frames)",
    Close.UNAUTHENTICATED: "unauthenticated: bad, expired or missing token; token_expired",
    Close.FORBIDDEN: "forbidden; kicked; session_ended",
    Close.SLOW_CONSUMER: "slow consumer: reconnect with after",
    Close.SUPERSEDED: "superseded by a newer connection of the same session",
    Close.RATE_LIMITED: "rate limited: reconnect after a pause",
}


def _name(kind: type) -> str:
    return kind.__name__


# The fields a state frame carries with each state (PROTOCOL.md, "Lifecycle").
STATE_FIELDS = {
    "AUTHENTICATED": ["user_id"],
    "SERVICES_READY": ["session_id"],
    "PROCESSING_READY": ["session_id", "position"],
    "CLOSED": ["code", "reason"],
}


def _by_state(schemas: dict[str, Any]) -> None:
    """The frames' state fields as the lifecycle has them: the welcome's is
    ACCEPTED, a state frame's one of the lifecycle's states, with the fields
    that state comes with required."""
    lifecycle: Any = Connection.lifecycle
    states = state_values(lifecycle)
    accepted = str(lifecycle.ACCEPTED.value)
    assert set(STATE_FIELDS) <= set(states), "a state of STATE_FIELDS left the lifecycle"
    schemas["WelcomeFrame"]["properties"]["state"] = {"type": "string", "const": accepted}
    # CONNECTING is recorded, never announced; ACCEPTED is the welcome's.
    announced = [s for s in states if s not in (initial_state(lifecycle), accepted)]
    frame = schemas["StateFrame"]
    frame["properties"]["state"] = {"type": "string", "enum": announced}
    frame["allOf"] = [
        {
            "if": {"properties": {"state": {"const": state}}, "required": ["state"]},
            "then": {
                "required": fields,
                "properties": {field: {"not": {"type": "null"}} for field in fields},
            },
        }
        for state, fields in STATE_FIELDS.items()
    ]


def asyncapi(*, version: str, host: str = "127.0.0.1:8080") -> dict[str, Any]:
    """The AsyncAPI 3.0 document of ``GET /v1/ws``."""
    client = [AuthFrame, MessageFrame]
    server = list(SERVER_FRAMES)
    (_, schemas) = msgspec.json.schema_components(
        [*client, *server, SocketQuery], ref_template=COMPONENTS
    )
    query = schemas.pop(SocketQuery.__name__)
    schemas["JsonValue"] = json_value_schema()
    _by_state(schemas)
    messages = {
        _name(kind): {
            "name": _name(kind),
            "title": (kind.__doc__ or _name(kind)).strip().splitlines()[0],
            "contentType": "application/json",
            "payload": {"$ref": COMPONENTS.format(name=_name(kind))},
        }
        for kind in (*client, *server)
    }
    channel_messages = {name: {"$ref": f"#/components/messages/{name}"} for name in messages}
    operations: dict[str, Any] = {}
    for action, kinds in (("send", client), ("receive", server)):
        for kind in kinds:
            operations[f"{action}{_name(kind)}"] = {
                "action": action,
                "channel": {"$ref": "#/channels/session"},
                "messages": [{"$ref": f"#/channels/session/messages/{_name(kind)}"}],
            }
    states = " -> ".join(s for s in state_values(Connection.lifecycle) if s != "CLOSED")
    closes = "\n".join(f"| {code} | {text} |" for code, text in sorted(CLOSE_MEANINGS.items()))
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "sessiond WebSocket protocol",
            "version": version,
            "description": (
                f"A connection walks {states}, and -> CLOSED from any of them; each "
                "transition is recorded under the connection's one ID before its "
                "`state` frame is sent. Authenticate with an `auth` frame (or a "
                "bearer token in the upgrade request). Session events follow as "
                "`event` frames, each position once, in order, from `after + 1`.\n\n"
                "| close code | meaning |\n| --- | --- |\n" + closes
            ),
            "license": {"name": "MIT"},
        },
        "servers": {
            "node": {
                "host": "{host}",
                "protocol": "ws",
                "pathname": "/",
                "description": "any sessiond node: its host and port",
                "variables": {"host": {"default": host}},
            }
        },
        "channels": {
            "session": {
                "address": "/v1/ws",
                "title": "one connection on one session",
                "messages": channel_messages,
                "bindings": {"ws": {"method": "GET", "query": query, "bindingVersion": "0.1.0"}},
            }
        },
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
        "x-close-codes": {str(code): text for code, text in sorted(CLOSE_MEANINGS.items())},
    }
