// pgnotifier example plugin (C): count notifications per channel and log a
// summary every N of them, keeping its state across calls.
//
// [config] channels = "orders,alerts"; every = "100" (the summary interval).
// `trace = "true"` also logs each payload as `got <case> <value>`.
//
// Memory: the string and list arguments of an export belong to us and are
// freed here; what we return is freed by the generated post-return code, so
// it must be heap memory.
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugin.h"

#define MAX_CHANNELS 256
#define CASES 6

static const char *const CASE_NAMES[CASES] = {"null", "boolean", "integer", "float", "text", "json"};

struct channel_count {
  char name[64];  // PostgreSQL channel names are at most 63 bytes
  unsigned long total;
  unsigned long by_case[CASES];
};

static struct channel_count counts[MAX_CHANNELS];
static size_t channel_total;
static unsigned long every = 100;
static bool trace;
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

static void set_error(plugin_string_t *err, const char *message) { plugin_string_dup(err, message); }

static struct channel_count *count_for(const plugin_string_t *channel) {
  for (size_t i = 0; i < channel_total; i++) {
    if (equals(channel, counts[i].name)) return &counts[i];
  }
  if (channel_total == MAX_CHANNELS || channel->len >= sizeof counts[0].name) return NULL;
  struct channel_count *c = &counts[channel_total++];
  memcpy(c->name, channel->ptr, channel->len);
  c->name[channel->len] = '\0';
  return c;
}

// The shortest %g form that reads back as the same double.
static void format_float(double value, char *out, size_t size) {
  for (int precision = 1; precision <= 17; precision++) {
    snprintf(out, size, "%.*g", precision, value);
    if (strtod(out, NULL) == value) return;
  }
}

// The cross-language trace line: the case and the value exactly.
static void trace_payload(const exports_pgnotifier_plugin_subscriber_payload_t *p) {
  char number[32];
  switch (p->tag) {
    case PGNOTIFIER_PLUGIN_TYPES_PAYLOAD_NULL:
      say(PGNOTIFIER_PLUGIN_HOST_LEVEL_INFO, "got null");
      break;
    case PGNOTIFIER_PLUGIN_TYPES_PAYLOAD_BOOLEAN:
      say(PGNOTIFIER_PLUGIN_HOST_LEVEL_INFO, "got boolean %s", p->val.boolean ? "true" : "false");
      break;
    case PGNOTIFIER_PLUGIN_TYPES_PAYLOAD_INTEGER:
      say(PGNOTIFIER_PLUGIN_HOST_LEVEL_INFO, "got integer %lld", (long long)p->val.integer);
      break;
    case PGNOTIFIER_PLUGIN_TYPES_PAYLOAD_FLOAT:
      format_float(p->val.float_, number, sizeof number);
      say(PGNOTIFIER_PLUGIN_HOST_LEVEL_INFO, "got float %s", number);
      break;
    case PGNOTIFIER_PLUGIN_TYPES_PAYLOAD_TEXT:
      say(PGNOTIFIER_PLUGIN_HOST_LEVEL_INFO, "got text %.*s", (int)p->val.text.len, (const char *)p->val.text.ptr);
      break;
    case PGNOTIFIER_PLUGIN_TYPES_PAYLOAD_JSON:
      say(PGNOTIFIER_PLUGIN_HOST_LEVEL_INFO, "got json %.*s", (int)p->val.json.len, (const char *)p->val.json.ptr);
      break;
  }
}

static void summary(const struct channel_count *c) {
  say(PGNOTIFIER_PLUGIN_HOST_LEVEL_INFO,
      "%s: %lu notifications (null %lu, boolean %lu, integer %lu, float %lu, text %lu, json %lu)", c->name,
      c->total, c->by_case[0], c->by_case[1], c->by_case[2], c->by_case[3], c->by_case[4], c->by_case[5]);
}

// Split "a, b,c" into a list of heap strings.
static void split_channels(const plugin_string_t *value, plugin_list_string_t *out) {
  size_t n = 0;
  out->ptr = calloc(value->len / 2 + 1, sizeof(plugin_string_t));
  out->len = 0;
  if (out->ptr == NULL) return;  // out of memory: no channels, and register says so
  size_t start = 0;
  for (size_t i = 0; i <= value->len; i++) {
    if (i == value->len || value->ptr[i] == ',') {
      size_t a = start, b = i;
      while (a < b && value->ptr[a] == ' ') a++;
      while (b > a && value->ptr[b - 1] == ' ') b--;
      if (b > a) plugin_string_dup_n(&out->ptr[n++], (const char *)value->ptr + a, b - a);
      start = i + 1;
    }
  }
  out->len = n;
}

bool exports_pgnotifier_plugin_subscriber_register(plugin_string_t *id, plugin_list_tuple2_string_string_t *config,
                                                   exports_pgnotifier_plugin_subscriber_registration_t *ret,
                                                   plugin_string_t *err) {
  bool ok = true;
  ret->channels.ptr = NULL;
  ret->channels.len = 0;
  for (size_t i = 0; i < config->len && ok; i++) {
    plugin_string_t *key = &config->ptr[i].f0, *value = &config->ptr[i].f1;
    if (equals(key, "channels")) {
      split_channels(value, &ret->channels);
      if (ret->channels.ptr == NULL) {
        set_error(err, "out of memory reading config channels");
        ok = false;
      }
    } else if (equals(key, "every")) {
      char text[24] = {0};
      char *end = NULL;
      if (value->len < sizeof text) memcpy(text, value->ptr, value->len);
      every = strtoul(text, &end, 10);
      if (value->len == 0 || value->len >= sizeof text || *end != '\0' || every == 0) {
        set_error(err, "config every must be a whole number above 0");
        ok = false;
      }
    } else if (equals(key, "trace")) {
      trace = equals(value, "true");
      if (!trace && !equals(value, "false")) {
        set_error(err, "config trace must be true or false");
        ok = false;
      }
    }
  }
  if (!ok) plugin_list_string_free(&ret->channels);
  plugin_string_free(id);
  plugin_list_tuple2_string_string_free(config);
  return ok;
}

bool exports_pgnotifier_plugin_subscriber_on_notify(plugin_string_t *id, plugin_string_t *channel,
                                                    exports_pgnotifier_plugin_subscriber_payload_t *payload,
                                                    int32_t pid, plugin_string_t *err) {
  (void)pid;
  bool ok = true;
  if (trace) trace_payload(payload);
  struct channel_count *c = count_for(channel);
  if (c == NULL) {
    set_error(err, "too many channels to count");
    ok = false;
  } else {
    c->total++;
    if (payload->tag < CASES) c->by_case[payload->tag]++;
    if (c->total % every == 0) summary(c);
  }
  plugin_string_free(id);
  plugin_string_free(channel);
  exports_pgnotifier_plugin_subscriber_payload_free(payload);
  return ok;
}

void exports_pgnotifier_plugin_subscriber_on_gap(plugin_string_t *id, plugin_list_string_t *channels) {
  for (size_t i = 0; i < channels->len; i++) {
    struct channel_count *c = count_for(&channels->ptr[i]);
    if (c != NULL) {
      say(PGNOTIFIER_PLUGIN_HOST_LEVEL_WARN, "%s: counts may be short after a reconnect", c->name);
      summary(c);
    }
  }
  plugin_string_free(id);
  plugin_list_string_free(channels);
}
