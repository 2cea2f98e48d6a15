// pgnotifier example plugin (JavaScript): log the JSON payloads whose field
// has a given value.
//
// [config] field = "order.status" (a dotted path), equals = "shipped".
// Without `equals`, any payload that has the field matches.
// `trace = "true"` also logs each payload as `got <case> <value>`.
import { log } from 'pgnotifier:plugin/host@0.5.0';

let path = [];
let equals;
let trace = false;

function configValue(config, key) {
  const entry = config.find(([k]) => k === key);
  return entry ? entry[1] : undefined;
}

// The payload's value. componentize-js 0.23 lifts a negative s64 inside the
// variant as if unsigned (-42 arrives as 18446744073709551574n); asIntN
// restores the sign, and is a no-op once the binding is fixed.
function valueOf(payload) {
  return payload.tag === 'integer' ? BigInt.asIntN(64, payload.val) : payload.val;
}

// The cross-language trace line: the case and the value exactly.
function describe(payload) {
  return payload.tag === 'null' ? 'got null' : `got ${payload.tag} ${String(valueOf(payload))}`;
}

function lookup(value, path) {
  for (const key of path) {
    if (value === null || typeof value !== 'object' || !(key in value)) return undefined;
    value = value[key];
  }
  return value;
}

export const subscriber = {
  register(id, config) {
    const field = configValue(config, 'field');
    if (!field) throw `config field is missing: say which field to filter on`;
    path = field.split('.');
    equals = configValue(config, 'equals');
    const flag = configValue(config, 'trace') ?? 'false';
    if (flag !== 'true' && flag !== 'false') throw `config trace = "${flag}" is not true or false`;
    trace = flag === 'true';
    const channels = (configValue(config, 'channels') ?? '').split(',').map((c) => c.trim()).filter((c) => c);
    return { channels };
  },

  onNotify(id, channel, payload, pid) {
    if (trace) log('info', describe(payload));
    if (payload.tag !== 'json') return;
    let value;
    try {
      value = JSON.parse(payload.val);
    } catch {
      return; // a number too big for a float: not an object
    }
    const found = lookup(value, path);
    if (found === undefined) return;
    const text = typeof found === 'string' ? found : JSON.stringify(found);
    if (equals === undefined || text === equals) {
      log('info', `matched on ${channel}: ${payload.val}`);
    }
  },

  onGap(id, channels) {
    log('warn', `may have missed notifications on ${channels.join(', ')}`);
  },
};
