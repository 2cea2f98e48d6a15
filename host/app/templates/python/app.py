"""{{name}}: a pgnotifier subscriber in Python.

It logs each order it is sent (`{"id": 7, ...}`) as `<greeting> order 7 on
<channel>`, and any other payload as its case and value. `value(payload)` is
the typed way in: a JSON payload as Python objects, a scalar as itself.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import Payload_Json, Payload_Null, Registration

greeting = "received"


def value(payload):
    """The payload as a Python value: dict/list for JSON, else the scalar."""
    if isinstance(payload, Payload_Null):
        return None
    if isinstance(payload, Payload_Json):
        return json.loads(payload.value)
    return payload.value


def case(payload):
    """The payload's case: null, boolean, integer, float, text or json."""
    return type(payload).__name__.removeprefix("Payload_").lower()


class Subscriber(exports.Subscriber):
    def register(self, id, config):
        global greeting
        settings = dict(config)
        greeting = settings.get("greeting", greeting)
        if not greeting:
            raise Err("config greeting is empty")
        # The sidecar's `channels` overrides these.
        return Registration(channels=["orders"])

    def on_notify(self, id, channel, payload, pid):
        v = value(payload)
        if isinstance(v, dict) and isinstance(v.get("id"), int):
            host.log(host.Level.INFO, f"{greeting} order {v['id']} on {channel}")
        else:
            host.log(host.Level.INFO, f"{greeting} {case(payload)} {json.dumps(v)} on {channel}")

    def on_gap(self, id, channels):
        host.log(host.Level.WARN, f"may have missed notifications on {', '.join(channels)}")
