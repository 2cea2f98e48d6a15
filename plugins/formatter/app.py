"""pgnotifier example plugin (Python): turn each payload into a human line.

`[config] channels = "orders,alerts"`; `trace = "true"` also logs each payload
as `got <case> <value>`, the line every example writes.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import (
    Payload_Boolean,
    Payload_Float,
    Payload_Integer,
    Payload_Json,
    Payload_Null,
    Payload_Text,
    Registration,
)

CASES = {
    Payload_Null: "null",
    Payload_Boolean: "boolean",
    Payload_Integer: "integer",
    Payload_Float: "float",
    Payload_Text: "text",
    Payload_Json: "json",
}

trace = False


def config_list(config, key):
    value = dict(config).get(key, "")
    return [item.strip() for item in value.split(",") if item.strip()]


def describe(payload):
    """The cross-language trace line: the case and the value exactly."""
    case = CASES[type(payload)]
    if isinstance(payload, Payload_Null):
        return "got null"
    if isinstance(payload, Payload_Boolean):
        return f"got boolean {'true' if payload.value else 'false'}"
    if isinstance(payload, Payload_Float):
        return f"got float {payload.value!r}"
    return f"got {case} {payload.value}"


def human(payload):
    """What a person wants to read."""
    if isinstance(payload, Payload_Null):
        return "nothing (null)"
    if isinstance(payload, Payload_Boolean):
        return "yes" if payload.value else "no"
    if isinstance(payload, (Payload_Integer, Payload_Float)):
        return f"{payload.value:,}"
    if isinstance(payload, Payload_Text):
        return payload.value if payload.value else "(empty)"
    value = json.loads(payload.value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v}"
                         for k, v in value.items()) or "(empty object)"
    if isinstance(value, list):
        return f"{len(value)} items: " + ", ".join(json.dumps(v, ensure_ascii=False) for v in value)
    return payload.value  # a number too big or too precise for integer/float


class Subscriber(exports.Subscriber):
    def register(self, id, config):
        global trace
        flag = dict(config).get("trace", "false")
        if flag not in ("true", "false"):
            raise Err(f"config trace = {flag!r} is not true or false")
        trace = flag == "true"
        return Registration(channels=config_list(config, "channels"))

    def on_notify(self, id, channel, payload, pid):
        if trace:
            host.log(host.Level.INFO, describe(payload))
        host.log(host.Level.INFO, f"#{channel} from pid {pid}: {human(payload)}")

    def on_gap(self, id, channels):
        host.log(host.Level.WARN, f"may have missed notifications on {', '.join(channels)}")
