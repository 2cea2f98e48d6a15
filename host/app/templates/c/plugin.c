// {{name}}: a pgnotifier subscriber in C. It logs each notification as
// `<greeting> <case> <value> on <channel>`, the greeting from its config.
//
// Memory: the string and list arguments of an export belong to us and are
// freed here; what we return is freed by the generated post-return code, so
// it must be heap memory. plugin.h is generated from the WIT by ./build.
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugin.h"

static char greeting[64] = "received";
static char line[9000];  // a payload is at most 7999 bytes

static void say(pgnotifier_plugin_host_level_t level, const char *format, ...) {
  va_list args;
  va_start(args, format);
  int len = vsnprintf(line, sizeof line, format, args);
  va_end(args);
  if (len < 0) return;
  if ((size_t)len >= sizeof line) len = sizeof line - 1;
  plugin_string_t message = {(uint8_t *)line, (size_t)len};
  pgnotifier_plugin_host_log(level, &message);
}

static bool equals(const plugin_string_t *s, const char *text) {
  return s->len == strlen(text) && memcmp(s->ptr, text, s->len) == 0;
}

bool exports_pgnotifier_plugin_subscriber_register(plugin_string_t *id, plugin_list_tuple2_string_string_t *config,
                                                   exports_pgnotifier_plugin_subscriber_registration_t *ret,
                                                   plugin_string_t *err) {
  bool ok = true;
  for (size_t i = 0; i < config->len; i++) {
    plugin_string_t *key = &config->ptr[i].f0, *value = &config->ptr[i].f1;
    if (equals(key, "greeting")) {
      if (value->len >= sizeof greeting) {
        plugin_string_dup(err, "config greeting is longer than 63 bytes");
        ok = false;
      } else {
        memcpy(greeting, value->ptr, value->len);
        greeting[value->len] = '\0';
      }
    }
  }
  // The channels to LISTEN on; the sidecar's `channels` overrides them.
  ret->channels.len = 0;
  ret->channels.ptr = ok ? calloc(1, sizeof(plugin_string_t)) : NULL;
  if (ret->channels.ptr != NULL) {
    plugin_string_dup(&ret->channels.ptr[0], "orders");
    ret->channels.len = 1;
  } else if (ok) {
    plugin_string_dup(err, "out of memory");
    ok = false;
  }
  plugin_string_free(id);
  plugin_list_tuple2_string_string_free(config);
  return ok;
}

bool exports_pgnotifier_plugin_subscriber_on_notify(plugin_string_t *id, plugin_string_t *channel,
                                                    exports_pgnotifier_plugin_subscriber_payload_t *payload,
                                                    int32_t pid, plugin_string_t *err) {
  (void)pid;
  (void)err;
  int ch_len = (int)channel->len;
  const char *ch = (const char *)channel->ptr;
  switch (payload->tag) {
    case PGNOTIFIER_PLUGIN_TYPES_PAYLOAD_NULL:
      say(PGNOTIFIER_PLUGIN_HOST_LEVEL_INFO, "%s null on %.*s", greeting, ch_len, ch);
      break;
    case PGNOTIFIER_PLUGIN_TYPES_PAYLOAD_BOOLEAN:
      say(PGNOTIFIER_PLUGIN_HOST_LEVEL_INFO, "%s boolean %s on %.*s", greeting,
          payload->val.boolean ? "true" : "false", ch_len, ch);
      break;
    case PGNOTIFIER_PLUGIN_TYPES_PAYLOAD_INTEGER:
      say(PGNOTIFIER_PLUGIN_HOST_LEVEL_INFO, "%s integer %lld on %.*s", greeting, (long long)payload->val.integer,
          ch_len, ch);
      break;
    case PGNOTIFIER_PLUGIN_TYPES_PAYLOAD_FLOAT:
      say(PGNOTIFIER_PLUGIN_HOST_LEVEL_INFO, "%s float %.17g on %.*s", greeting, payload->val.float_, ch_len, ch);
      break;
    case PGNOTIFIER_PLUGIN_TYPES_PAYLOAD_TEXT:
      say(PGNOTIFIER_PLUGIN_HOST_LEVEL_INFO, "%s text %.*s on %.*s", greeting, (int)payload->val.text.len,
          (const char *)payload->val.text.ptr, ch_len, ch);
      break;
    case PGNOTIFIER_PLUGIN_TYPES_PAYLOAD_JSON:
      say(PGNOTIFIER_PLUGIN_HOST_LEVEL_INFO, "%s json %.*s on %.*s", greeting, (int)payload->val.json.len,
          (const char *)payload->val.json.ptr, ch_len, ch);
      break;
  }
  plugin_string_free(id);
  plugin_string_free(channel);
  exports_pgnotifier_plugin_subscriber_payload_free(payload);
  return true;
}

void exports_pgnotifier_plugin_subscriber_on_gap(plugin_string_t *id, plugin_list_string_t *channels) {
  say(PGNOTIFIER_PLUGIN_HOST_LEVEL_WARN, "may have missed notifications on %zu channel(s)", channels->len);
  plugin_string_free(id);
  plugin_list_string_free(channels);
}
