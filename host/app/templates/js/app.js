// {{name}}: a pgnotifier subscriber in JavaScript.
//
// It logs each order it is sent ({"id": 7, ...}) as `<greeting> order 7 on
// <channel>`, and any other payload as its case and value. `value(payload)`
// is the typed way in: a JSON payload parsed, a scalar as itself.
import { log } from 'pgnotifier:plugin/host@0.5.0';

let greeting = 'received';

// The payload as a JavaScript value. An integer arrives as a BigInt;
// asIntN keeps the sign of a negative one (componentize-js 0.23 lifts it
// as unsigned).
function value(payload) {
  switch (payload.tag) {
    case 'null':
      return null;
    case 'json':
      return JSON.parse(payload.val);
    case 'integer':
      return BigInt.asIntN(64, payload.val);
    default:
      return payload.val;
  }
}

export const subscriber = {
  register(id, config) {
    const entry = config.find(([key]) => key === 'greeting');
    if (entry) greeting = entry[1];
    if (!greeting) throw 'config greeting is empty';
    // The sidecar's `channels` overrides these.
    return { channels: ['orders'] };
  },

  onNotify(id, channel, payload, pid) {
    const v = value(payload);
    if (v !== null && typeof v === 'object' && Number.isInteger(v.id)) {
      log('info', `${greeting} order ${v.id} on ${channel}`);
    } else {
      log('info', `${greeting} ${payload.tag} ${String(v)} on ${channel}`);
    }
  },

  onGap(id, channels) {
    log('warn', `may have missed notifications on ${channels.join(', ')}`);
  },
};
