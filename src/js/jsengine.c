/*
 * JavaScript engine over the JavaScriptCore C API: one VM (context group) per engine, one hardened realm
 * (js/jsrealm.c) that the jobs run in one after the other, so nothing a script does is visible to the
 * next job.
 *
 * Invariants:
 *  - A job runs inside ONE outermost VM entry: a native trampoline called with JSObjectCallAsFunction.
 *    JavaScriptCore's execution time limit counts per outermost entry, and it drains microtasks only
 *    when the API lock is released, each microtask then being an outermost entry with a fresh budget,
 *    so a promise chain that never ends would escape the limit. Inside the trampoline the lock is
 *    held (JSLock) and microtasks are drained explicitly with JSC::VM::drainMicrotasks (exported by
 *    the library; looked up with dlsym, a JSContextGroupRef is the VM): they run under the job's one
 *    budget, and once a drain returns no microtask is left, so a thenable still pending never settles.
 *    The queue is drained before the trampoline returns, even after an error, so no task of a job
 *    runs during the next one. The limit itself is a wall-clock deadline (see should_terminate).
 *  - JSValueRefs live only in locals and in the job struct, which sits on the C stack of the run call:
 *    JavaScriptCore scans the machine stack conservatively, so nothing is protected but the trampoline.
 *  - The request is parsed by JavaScriptCore into the realm (the request object is never reachable
 *    from the script), and the response is written as text: the output is JavaScriptCore's own JSON
 *    text, spliced in.
 *  - Script-visible state is the realm's frozen standard built-ins, `args` and its keys, and our
 *    `console` (installed with the realm); nothing else: no require, timers, I/O. After the job the
 *    realm's clean() removes the globals it added; a realm that cannot be cleaned, whose job timed
 *    out, or that ran BW_JSENGINE_REALM_JOBS jobs is replaced by bw_jsengine_prepare.
 *  - Native callbacks created with JSObjectMakeFunctionWithCallback carry no user pointer: they find
 *    the running job through a thread-local set for the duration of a run (NULL otherwise).
 *
 * Semantics: the completion value is the output; a thenable (an object with a callable `then`, such as
 * a Promise) is awaited through its then. Nested values follow JSON.stringify (functions, undefined and
 * symbols inside objects are dropped, in arrays they become null) except that NaN and ±Infinity
 * anywhere are an error instead of null: when the text contains "null", a second JSON.stringify pass
 * with a replacer looks for them (toJSON methods then run twice). The built-ins the engine uses after
 * the script ran (then, JSON.stringify, Error) are frozen: a script cannot replace them. Lone UTF-16
 * surrogates become U+FFFD, integers beyond int64 become JSON reals.
 */
#include "js/jsengine.h"

#include "js/jsrealm.h"

#include <JavaScriptCore/JavaScript.h>
#include <dlfcn.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "util/clock.h"
#include "util/jsonw.h"
#include "util/xalloc.h"

/* Private but exported JavaScriptCore API (JSContextRefPrivate.h, JSBasePrivate.h). */
typedef bool (*JSShouldTerminateCallback)(JSContextRef ctx, void *context);
void JSContextGroupSetExecutionTimeLimit(JSContextGroupRef group, double limit, JSShouldTerminateCallback cb,
                                         void *context);
void JSContextGroupClearExecutionTimeLimit(JSContextGroupRef group);
void JSSynchronousGarbageCollectForDebugging(JSContextRef ctx);
void JSLock(JSContextRef ctx);
void JSUnlock(JSContextRef ctx);

#define DRAIN_SYMBOL "_ZN3JSC2VM15drainMicrotasksEv" /* JSC::VM::drainMicrotasks() */
#define MAX_THENABLE_DEPTH 100

/* Property names, created once per engine. */
#define BW_JS_NAMES(X)                                                                                       \
    X(ID, "id")                                                                                              \
    X(CODE, "code")                                                                                          \
    X(ARGS, "args")                                                                                          \
    X(TIMEOUT_MS, "timeout_ms")                                                                              \
    X(MAX_OUTPUT, "max_output_bytes")                                                                        \
    X(MAX_LOGS, "max_logs")                                                                                  \
    X(MAX_LOG_BYTES, "max_log_bytes")                                                                        \
    X(THEN, "then")                                                                                          \
    X(ERROR_CTOR, "Error")                                                                                   \
    X(JSON, "JSON")                                                                                          \
    X(STRINGIFY, "stringify")                                                                                \
    X(LINE, "line")                                                                                          \
    X(COLUMN, "column")                                                                                      \
    X(DESCRIPTION, "description")

enum {
#define BW_JS_NAME_ENUM(id, s) N_##id,
    BW_JS_NAMES(BW_JS_NAME_ENUM)
#undef BW_JS_NAME_ENUM
        N_COUNT
};

static const char *const name_text[N_COUNT] = {
#define BW_JS_NAME_TEXT(id, s) s,
    BW_JS_NAMES(BW_JS_NAME_TEXT)
#undef BW_JS_NAME_TEXT
};

struct bw_jsengine {
    JSContextGroupRef group;
    void (*drain)(void *vm); /* JSC::VM::drainMicrotasks; the group ref is the VM */
    JSGlobalContextRef home; /* never runs scripts; holds the trampoline */
    JSObjectRef trampoline;  /* protected */
    bw_jsrealm_t realm;      /* the jobs' realm; realm.ctx NULL: none yet */
    bool realm_spent;        /* the realm may hold something of a job: release it */
    uint64_t realm_jobs;     /* jobs run in the realm */
    uint64_t realms;         /* realms created */
    int64_t limit_ms;        /* the time limit (slice) currently set on the group, 0 if none */
    JSStringRef names[N_COUNT];
    bw_buf_t text; /* the request, NUL-terminated for JavaScriptCore */
};

enum settle { SETTLE_PENDING, SETTLE_FULFILLED, SETTLE_REJECTED };
enum level { LEVEL_LOG, LEVEL_INFO, LEVEL_WARN, LEVEL_ERROR };
static const char *const level_name[] = {"log", "info", "warn", "error"};

typedef struct job {
    bw_jsengine_t *eng;
    JSGlobalContextRef ctx;
    /* the request */
    bw_buf_t id; /* JSON text */
    JSStringRef code;
    JSValueRef args;
    int64_t timeout_ms, max_output, max_logs, max_log_bytes;
    /* state */
    uint64_t deadline_ns; /* wall clock */
    bool timed_out;
    enum settle settle;
    JSValueRef settled;
    const char *nonfinite; /* "NaN", "Infinity" or "-Infinity" once the replacer saw one */
    JSValueRef main;       /* the code's function `main`, handed over by the code's last statement */
    uint64_t random;       /* Math.random's state, seeded from the kernel on first use */
    bool random_seeded;
    /* outcome: error_code stays NULL on success */
    const char *error_code;
    char *message;
    long line, column; /* -1: unknown */
    bw_buf_t output;   /* JSON text; empty: no output */
    bw_buf_t logs;     /* the entries, comma-separated */
    int64_t log_count, log_bytes;
    bool logs_truncated;
} job_t;

static _Thread_local job_t *current;

/* ---- strings ---- */

/* The number of UTF-16 code units that the UTF-8 text s encodes. */
static size_t utf16_units(const char *s, size_t n)
{
    size_t units = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        units += (c & 0xC0) != 0x80;
        units += c >= 0xF0;
    }
    return units;
}

static char *put_utf8(char *o, uint32_t c)
{
    if (c < 0x80) {
        *o++ = (char)c;
    } else if (c < 0x800) {
        *o++ = (char)(0xC0 | c >> 6);
        *o++ = (char)(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
        *o++ = (char)(0xE0 | c >> 12);
        *o++ = (char)(0x80 | (c >> 6 & 0x3F));
        *o++ = (char)(0x80 | (c & 0x3F));
    } else {
        *o++ = (char)(0xF0 | c >> 18);
        *o++ = (char)(0x80 | (c >> 12 & 0x3F));
        *o++ = (char)(0x80 | (c >> 6 & 0x3F));
        *o++ = (char)(0x80 | (c & 0x3F));
    }
    return o;
}

/* Appends UTF-16 text as UTF-8, lone surrogates as U+FFFD. */
static void append_utf16(bw_buf_t *b, const JSChar *u, size_t n)
{
    char *start = bw_buf_reserve(b, 3 * n), *o = start;
    for (size_t i = 0; i < n; i++) {
        uint32_t c = u[i];
        if (c >= 0xD800 && c <= 0xDBFF && i + 1 < n && u[i + 1] >= 0xDC00 && u[i + 1] <= 0xDFFF)
            c = 0x10000 + ((c - 0xD800) << 10) + (u[++i] - 0xDC00u);
        else if (c >= 0xD800 && c <= 0xDFFF)
            c = 0xFFFD;
        o = put_utf8(o, c);
    }
    b->len += (size_t)(o - start);
    b->p[b->len] = '\0';
}

/* Appends s as UTF-8. JavaScriptCore's converter stops at a lone surrogate (detected by counting the
   code units it wrote); such strings take the slow path, which writes U+FFFD instead. */
static void append_jsstring(bw_buf_t *b, JSStringRef s)
{
    size_t units = JSStringGetLength(s), max = JSStringGetMaximumUTF8CStringSize(s);
    char *o = bw_buf_reserve(b, max);
    size_t n = JSStringGetUTF8CString(s, o, max);
    n = n > 0 ? n - 1 : 0;
    if (utf16_units(o, n) == units) {
        b->len += n;
        b->p[b->len] = '\0';
        return;
    }
    b->p[b->len] = '\0';
    append_utf16(b, JSStringGetCharactersPtr(s), units);
}

/* ---- failures ---- */

/* Records the job's failure; the first one wins. msg is copied, cut to BW_JSENGINE_MESSAGE_MAX bytes
   at a character boundary. */
static void job_fail(job_t *j, const char *code, const char *msg, size_t len)
{
    if (j->error_code != NULL)
        return;
    if (len > BW_JSENGINE_MESSAGE_MAX) {
        len = BW_JSENGINE_MESSAGE_MAX;
        while (len > 0 && ((unsigned char)msg[len] & 0xC0) == 0x80)
            len--;
    }
    j->error_code = code;
    j->message = bw_strndup(msg, len);
}

static void fail_str(job_t *j, const char *code, const char *msg)
{
    job_fail(j, code, msg, strlen(msg));
}

/* A timeout outranks whatever the terminated script reported. */
static void fail_timeout(job_t *j)
{
    char *msg = bw_asprintf("the script exceeded its time limit of %lld ms", (long long)j->timeout_ms);
    free(j->message);
    j->message = NULL;
    j->error_code = NULL;
    j->line = j->column = -1;
    fail_str(j, "SCRIPT_TIMEOUT", msg);
    free(msg);
}

static JSObjectRef get_object(job_t *j, JSObjectRef o, int name)
{
    JSValueRef v = o != NULL ? JSObjectGetProperty(j->ctx, o, j->eng->names[name], NULL) : NULL;
    return v != NULL && JSValueIsObject(j->ctx, v) ? (JSObjectRef)v : NULL;
}

/* Whether v is an Error of the realm (looked up now: only printing needs it). */
static bool is_error(job_t *j, JSValueRef v)
{
    JSObjectRef ctor = get_object(j, JSContextGetGlobalObject(j->ctx), N_ERROR_CTOR);
    return ctor != NULL && JSValueIsInstanceOfConstructor(j->ctx, v, ctor, NULL);
}

/* The string a symbol prints as: Symbol(description). */
static JSStringRef symbol_string(job_t *j, JSValueRef v)
{
    bw_buf_t b;
    JSObjectRef o = JSValueToObject(j->ctx, v, NULL);
    JSValueRef d = o != NULL ? JSObjectGetProperty(j->ctx, o, j->eng->names[N_DESCRIPTION], NULL) : NULL;
    bw_buf_init(&b, 32);
    bw_buf_puts(&b, "Symbol(");
    if (d != NULL && JSValueIsString(j->ctx, d)) {
        JSStringRef s = JSValueToStringCopy(j->ctx, d, NULL);
        append_jsstring(&b, s);
        JSStringRelease(s);
    }
    bw_buf_puts(&b, ")");
    JSStringRef out = JSStringCreateWithUTF8CString(b.p);
    bw_buf_dispose(&b);
    return out;
}

/* Errors and functions print through String(), other objects through JSON.stringify, except that an
   object that stringifies to {} but has a String() of its own uses that (an Error whose realm lost its
   Error binding, a class with a toString). NULL when nothing works. */
static JSStringRef object_string(job_t *j, JSObjectRef o)
{
    JSStringRef json = NULL, str;
    if (!JSObjectIsFunction(j->ctx, o) && !is_error(j, o)) {
        json = JSValueCreateJSONString(j->ctx, o, 0, NULL);
        if (j->timed_out || (json != NULL && !JSStringIsEqualToUTF8CString(json, "{}")))
            return json;
    }
    str = JSValueToStringCopy(j->ctx, o, NULL);
    if (json != NULL && (str == NULL || JSStringIsEqualToUTF8CString(str, "[object Object]"))) {
        if (str != NULL)
            JSStringRelease(str);
        return json;
    }
    if (json != NULL)
        JSStringRelease(json);
    return str;
}

/* Appends v formatted like a minimal console: strings as they are, objects as above, other values
   through String(). Returns false, appending nothing, when the text would pass `limit` bytes in b. */
static bool format_value(job_t *j, JSValueRef v, bw_buf_t *b, size_t limit)
{
    JSStringRef s;
    switch (JSValueGetType(j->ctx, v)) {
    case kJSTypeSymbol:
        s = symbol_string(j, v);
        break;
    case kJSTypeObject:
        s = object_string(j, (JSObjectRef)v);
        break;
    default:
        s = JSValueToStringCopy(j->ctx, v, NULL);
        break;
    }
    if (s == NULL) {
        bw_buf_puts(b, "[unprintable value]");
        return b->len <= limit;
    }
    /* UTF-8 never has fewer bytes than UTF-16 code units */
    bool fits = b->len <= limit && JSStringGetLength(s) <= limit - b->len;
    if (fits)
        append_jsstring(b, s);
    JSStringRelease(s);
    return fits && b->len <= limit;
}

/* A 1-based number property of a thrown object (line, column); -1 when absent (or 0: unknown). */
static long number_prop(job_t *j, JSValueRef v, int name)
{
    if (!JSValueIsObject(j->ctx, v))
        return -1;
    JSValueRef p = JSObjectGetProperty(j->ctx, (JSObjectRef)v, j->eng->names[name], NULL);
    if (p == NULL || !JSValueIsNumber(j->ctx, p))
        return -1;
    double d = JSValueToNumber(j->ctx, p, NULL);
    return d >= 1 && d < 1e9 ? (long)d : -1;
}

/* Fails the job with `code` from a thrown value: prefix + its text, its line and column. A terminated
   script is a timeout whatever it threw. */
static void fail_thrown(job_t *j, const char *code, const char *prefix, JSValueRef exc)
{
    bw_buf_t b;
    if (j->timed_out) {
        fail_timeout(j);
        return;
    }
    bw_buf_init(&b, 128);
    bw_buf_puts(&b, prefix);
    if (exc == NULL)
        bw_buf_puts(&b, "unknown error");
    else if (!format_value(j, exc, &b, 16 * BW_JSENGINE_MESSAGE_MAX)) /* job_fail cuts it further */
        bw_buf_puts(&b, "[message too long]");
    bool first = j->error_code == NULL;
    job_fail(j, code, b.p, b.len);
    if (first && exc != NULL) {
        j->line = number_prop(j, exc, N_LINE);
        j->column = number_prop(j, exc, N_COLUMN);
    }
    bw_buf_dispose(&b);
}

static const char *nonfinite_name(double d)
{
    return isnan(d) ? "NaN" : d > 0 ? "Infinity" : "-Infinity";
}

static void fail_nonfinite(job_t *j, const char *name)
{
    char *msg = bw_asprintf("the result contains %s, which JSON cannot represent", name);
    fail_str(j, "SCRIPT_RESULT_NOT_JSON", msg);
    free(msg);
}

/* ---- console ---- */

/* console.<level>(...args): one entry, unless the job's log budget is spent. */
static JSValueRef console_write(enum level level, size_t argc, const JSValueRef argv[])
{
    job_t *j = current;
    bw_buf_t b;
    if (j == NULL || j->logs_truncated)
        return NULL;
    if (j->log_count >= j->max_logs) {
        j->logs_truncated = true;
        return NULL;
    }
    size_t room = (size_t)(j->max_log_bytes - j->log_bytes);
    bool fits = true;
    bw_buf_init(&b, 64);
    for (size_t i = 0; i < argc && fits; i++) {
        if (i > 0)
            bw_buf_append(&b, " ", 1);
        fits = format_value(j, argv[i], &b, room);
    }
    /* formatting may have run a getter that logged: check the budget again */
    fits = fits && !j->logs_truncated && j->log_count < j->max_logs &&
           (int64_t)b.len <= j->max_log_bytes - j->log_bytes;
    if (fits) {
        bw_buf_printf(&j->logs, "%s{\"level\":\"%s\",\"message\":", j->log_count > 0 ? "," : "",
                      level_name[level]);
        bw_jsonw_string(&j->logs, b.p, b.len);
        bw_buf_append(&j->logs, "}", 1);
        j->log_count++;
        j->log_bytes += (int64_t)b.len;
    } else {
        j->logs_truncated = true;
    }
    bw_buf_dispose(&b);
    return NULL;
}

#define BW_CONSOLE_FN(fn, level)                                                                             \
    static JSValueRef fn(JSContextRef ctx, JSObjectRef f, JSObjectRef self, size_t argc,                     \
                         const JSValueRef argv[], JSValueRef *exc)                                           \
    {                                                                                                        \
        return console_write(level, argc, argv);                                                             \
    }
BW_CONSOLE_FN(console_log, LEVEL_LOG)
BW_CONSOLE_FN(console_info, LEVEL_INFO)
BW_CONSOLE_FN(console_warn, LEVEL_WARN)
BW_CONSOLE_FN(console_error, LEVEL_ERROR)

/* ---- the job, inside the VM entry ---- */

static void drain(job_t *j)
{
    j->eng->drain((void *)j->eng->group);
}

/* Each key of an object `args` becomes a global, then `args` itself (so `args` always is the whole). */
static void install_args(job_t *j, JSObjectRef global)
{
    if (JSValueIsObject(j->ctx, j->args) && !JSValueIsArray(j->ctx, j->args)) {
        JSObjectRef a = (JSObjectRef)j->args;
        JSPropertyNameArrayRef names = JSObjectCopyPropertyNames(j->ctx, a);
        for (size_t i = 0, n = JSPropertyNameArrayGetCount(names); i < n; i++) {
            JSStringRef name = JSPropertyNameArrayGetNameAtIndex(names, i);
            JSValueRef val = JSObjectGetProperty(j->ctx, a, name, NULL);
            JSObjectSetProperty(j->ctx, global, name, val, kJSPropertyAttributeNone, NULL);
        }
        JSPropertyNameArrayRelease(names);
    }
    JSObjectSetProperty(j->ctx, global, j->eng->names[N_ARGS], j->args, kJSPropertyAttributeNone, NULL);
}

static JSValueRef settle(enum settle how, JSContextRef ctx, size_t argc, const JSValueRef argv[])
{
    job_t *j = current;
    if (j != NULL && j->settle == SETTLE_PENDING) {
        j->settle = how;
        j->settled = argc > 0 ? argv[0] : JSValueMakeUndefined(ctx);
    }
    return NULL;
}

static JSValueRef on_fulfilled(JSContextRef ctx, JSObjectRef f, JSObjectRef self, size_t argc,
                               const JSValueRef argv[], JSValueRef *exc)
{
    return settle(SETTLE_FULFILLED, ctx, argc, argv);
}

static JSValueRef on_rejected(JSContextRef ctx, JSObjectRef f, JSObjectRef self, size_t argc,
                              const JSValueRef argv[], JSValueRef *exc)
{
    return settle(SETTLE_REJECTED, ctx, argc, argv);
}

/* Awaits a thenable: then(onFulfilled, onRejected), then drains the microtask queue. Returns the
   fulfilled value, or NULL after failing the job. */
static JSValueRef await_thenable(job_t *j, JSObjectRef thenable, JSObjectRef then)
{
    JSValueRef exc = NULL;
    JSValueRef argv[2] = {JSObjectMakeFunctionWithCallback(j->ctx, NULL, on_fulfilled),
                          JSObjectMakeFunctionWithCallback(j->ctx, NULL, on_rejected)};
    JSObjectCallAsFunction(j->ctx, then, thenable, 2, argv, &exc);
    if (exc == NULL)
        drain(j);
    if (exc != NULL || j->timed_out) {
        fail_thrown(j, "SCRIPT_ERROR", "", exc);
        return NULL;
    }
    if (j->settle == SETTLE_PENDING)
        fail_str(j, "SCRIPT_ERROR",
                 "the promise never settled (no pending work is left that could settle it)");
    else if (j->settle == SETTLE_REJECTED)
        fail_thrown(j, "SCRIPT_ERROR", "", j->settled);
    return j->settle == SETTLE_FULFILLED ? j->settled : NULL;
}

/* The value itself, or what it settles to when it is a thenable (again while the settled value is one,
   as await does); NULL after failing the job. */
static JSValueRef settle_result(job_t *j, JSValueRef v)
{
    for (int depth = 0; v != NULL && JSValueIsObject(j->ctx, v) && !JSValueIsArray(j->ctx, v); depth++) {
        JSValueRef exc = NULL;
        JSValueRef then = JSObjectGetProperty(j->ctx, (JSObjectRef)v, j->eng->names[N_THEN], &exc);
        if (exc != NULL) {
            fail_thrown(j, "SCRIPT_ERROR", "", exc);
            return NULL;
        }
        if (!JSValueIsObject(j->ctx, then) || !JSObjectIsFunction(j->ctx, (JSObjectRef)then))
            break;
        if (depth == MAX_THENABLE_DEPTH) {
            fail_str(j, "SCRIPT_ERROR", "the result is a thenable that keeps settling to thenables");
            return NULL;
        }
        j->settle = SETTLE_PENDING;
        v = await_thenable(j, (JSObjectRef)v, (JSObjectRef)then);
    }
    return v;
}

/* JSON.stringify replacer that notes the first non-finite number it is shown. */
static JSValueRef nonfinite_replacer(JSContextRef ctx, JSObjectRef f, JSObjectRef self, size_t argc,
                                     const JSValueRef argv[], JSValueRef *exc)
{
    job_t *j = current;
    if (argc < 2)
        return NULL;
    if (j != NULL && j->nonfinite == NULL && JSValueIsNumber(ctx, argv[1])) {
        double d = JSValueToNumber(ctx, argv[1], NULL);
        if (!isfinite(d))
            j->nonfinite = nonfinite_name(d);
    }
    return argv[1];
}

/* JSON.stringify turned NaN/Infinity into null: stringify again with a replacer to tell them apart from
   real nulls. Runs only when the text contains "null". */
static bool has_nonfinite(job_t *j, JSValueRef v)
{
    JSObjectRef json = get_object(j, JSContextGetGlobalObject(j->ctx), N_JSON);
    JSObjectRef stringify = get_object(j, json, N_STRINGIFY);
    JSValueRef argv[2] = {v, JSObjectMakeFunctionWithCallback(j->ctx, NULL, nonfinite_replacer)};
    if (stringify != NULL && JSObjectIsFunction(j->ctx, stringify))
        JSObjectCallAsFunction(j->ctx, stringify, json, 2, argv, NULL);
    return j->nonfinite != NULL;
}

/* ---- JSON text that jansson would reject ---- */

/* Copies a JSON number token, adding ".0" to an integer too long for int64 so jansson reads a real. */
static size_t repair_number(const char *p, size_t n, bw_buf_t *out)
{
    size_t i = p[0] == '-', digits = 0;
    for (; i < n && p[i] >= '0' && p[i] <= '9'; i++)
        digits++;
    bool integer = i >= n || (p[i] != '.' && p[i] != 'e' && p[i] != 'E');
    while (i < n && strchr("0123456789.eE+-", p[i]) != NULL)
        i++;
    bw_buf_append(out, p, i);
    if (integer && digits >= 19)
        bw_buf_append(out, ".0", 2);
    return i;
}

static int hex_digit(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

static int hex4(const char *p)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        int d = hex_digit(p[i]);
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Copies an escape inside a JSON string; a \u escape of a lone surrogate becomes \ufffd. */
static size_t repair_escape(const char *p, size_t n, bw_buf_t *out)
{
    int c = n >= 6 && p[1] == 'u' ? hex4(p + 2) : -1;
    if (c < 0xD800 || c > 0xDFFF) {
        size_t len = c >= 0 ? 6 : n >= 2 ? 2 : n;
        bw_buf_append(out, p, len);
        return len;
    }
    int low = c <= 0xDBFF && n >= 12 && p[6] == '\\' && p[7] == 'u' ? hex4(p + 8) : -1;
    if (low >= 0xDC00 && low <= 0xDFFF) {
        bw_buf_append(out, p, 12);
        return 12;
    }
    bw_buf_append(out, "\\ufffd", 6);
    return 6;
}

/* Whether JavaScriptCore's JSON text may hold what jansson rejects: a \uD800-\uDFFF escape (only lone
   surrogates are escaped) or a run of 19 or more digits (an integer beyond int64, or a false alarm). */
static bool needs_repair(const char *p, size_t n)
{
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        run = p[i] >= '0' && p[i] <= '9' ? run + 1 : 0;
        if (run >= 19 || (p[i] == '\\' && i + 3 < n && p[i + 1] == 'u' && (p[i + 2] | 0x20) == 'd' &&
                          hex_digit(p[i + 3]) >= 8))
            return true;
    }
    return false;
}

/* Rewrites what jansson rejects in JavaScriptCore's JSON text: integers beyond int64, lone surrogates. */
static void repair_json(const char *p, size_t n, bw_buf_t *out)
{
    bool in_string = false;
    for (size_t i = 0; i < n;) {
        if (in_string && p[i] == '\\') {
            i += repair_escape(p + i, n - i, out);
        } else if (!in_string && (p[i] == '-' || (p[i] >= '0' && p[i] <= '9'))) {
            i += repair_number(p + i, n - i, out);
        } else {
            in_string ^= p[i] == '"';
            bw_buf_append(out, p + i, 1);
            i++;
        }
    }
}

/* ---- the output ---- */

/* Takes the JSON text of the result as the job's output, within max_output_bytes. */
static void take_json(job_t *j, JSValueRef v, JSStringRef text)
{
    bw_buf_t *o = &j->output;
    if ((int64_t)JSStringGetLength(text) > j->max_output) {
        fail_str(j, "SCRIPT_OUTPUT_TOO_LARGE", "the result is larger than max_output_bytes as JSON");
        return;
    }
    append_jsstring(o, text);
    if ((int64_t)o->len > j->max_output)
        fail_str(j, "SCRIPT_OUTPUT_TOO_LARGE", "the result is larger than max_output_bytes as JSON");
    else if (memmem(o->p, o->len, "null", 4) != NULL && has_nonfinite(j, v))
        fail_nonfinite(j, j->nonfinite);
    else if (needs_repair(o->p, o->len)) {
        bw_buf_t fixed;
        bw_buf_init(&fixed, o->len + 16);
        repair_json(o->p, o->len, &fixed);
        bw_buf_dispose(o);
        *o = fixed;
    }
    if (j->error_code != NULL)
        o->len = 0;
}

/* Whether v is a string too long for the output even before JSON.stringify copies it. */
static bool is_long_string(job_t *j, JSValueRef v)
{
    if (!JSValueIsString(j->ctx, v))
        return false;
    JSStringRef s = JSValueToStringCopy(j->ctx, v, NULL);
    bool too_long = s != NULL && (int64_t)JSStringGetLength(s) + 2 > j->max_output;
    if (s != NULL)
        JSStringRelease(s);
    return too_long;
}

/* The completion value as the job's output: undefined is no output; functions, symbols, BigInts,
   non-finite numbers and what JSON.stringify rejects (cycles, nested BigInts) are errors. */
static void convert_output(job_t *j, JSValueRef v)
{
    const char *not_json = NULL;
    switch (JSValueGetType(j->ctx, v)) {
    case kJSTypeUndefined:
        return;
    case kJSTypeSymbol:
        not_json = "the result is a symbol, which JSON cannot represent";
        break;
    case kJSTypeBigInt:
        not_json = "the result is a BigInt, which JSON cannot represent";
        break;
    case kJSTypeNumber:
        if (!isfinite(JSValueToNumber(j->ctx, v, NULL))) {
            fail_nonfinite(j, nonfinite_name(JSValueToNumber(j->ctx, v, NULL)));
            return;
        }
        break;
    case kJSTypeObject:
        if (JSObjectIsFunction(j->ctx, (JSObjectRef)v))
            not_json = "the result is a function, which JSON cannot represent";
        break;
    default:
        break;
    }
    if (not_json == NULL && is_long_string(j, v)) {
        fail_str(j, "SCRIPT_OUTPUT_TOO_LARGE", "the result is larger than max_output_bytes as JSON");
        return;
    }
    if (not_json != NULL) {
        fail_str(j, "SCRIPT_RESULT_NOT_JSON", not_json);
        return;
    }
    JSValueRef exc = NULL;
    JSStringRef text = JSValueCreateJSONString(j->ctx, v, 0, &exc);
    if (text != NULL) {
        take_json(j, v, text);
        JSStringRelease(text);
    } else if (exc != NULL) {
        fail_thrown(j, "SCRIPT_RESULT_NOT_JSON", "the result cannot be converted to JSON: ", exc);
    }
}

static void job_body(job_t *j)
{
    JSValueRef exc = NULL, result = NULL;
    install_args(j, JSContextGetGlobalObject(j->ctx));
    bool ran = bw_jsrealm_run(&j->eng->realm, j->code, &result, &exc);
    /* The router's scripts define `function main(args) { ... }` and complete with undefined: then the
       value is main(args) (awaited like any completion value). */
    if (ran && JSValueIsUndefined(j->ctx, result) && j->main != NULL && JSValueIsObject(j->ctx, j->main) &&
        JSObjectIsFunction(j->ctx, (JSObjectRef)j->main))
        result = JSObjectCallAsFunction(j->ctx, (JSObjectRef)j->main, NULL, 1, &j->args, &exc);
    if (!ran || result == NULL) {
        fail_thrown(j, "SCRIPT_ERROR", "", exc);
        return;
    }
    drain(j);
    if (!j->timed_out && (result = settle_result(j, result)) != NULL)
        convert_output(j, result);
}

/* The job's single VM entry (see the top of the file). */
static JSValueRef trampoline(JSContextRef ctx, JSObjectRef f, JSObjectRef self, size_t argc,
                             const JSValueRef argv[], JSValueRef *exc)
{
    job_t *j = current;
    JSLock(j->ctx);
    job_body(j);
    drain(j); /* nothing of this job may run during the next one */
    if (j->timed_out || !bw_jsrealm_clean(&j->eng->realm))
        j->eng->realm_spent = true;
    JSUnlock(j->ctx);
    return NULL;
}

/* ---- the request ---- */

static const struct {
    int name;
    size_t offset;
    int64_t def, min, max;
} limit_fields[] = {
    {N_TIMEOUT_MS, offsetof(job_t, timeout_ms), BW_JSENGINE_DEFAULT_TIMEOUT_MS, 1, 24 * 3600 * 1000},
    {N_MAX_OUTPUT, offsetof(job_t, max_output), BW_JSENGINE_DEFAULT_MAX_OUTPUT, 0, INT64_C(1) << 50},
    {N_MAX_LOGS, offsetof(job_t, max_logs), BW_JSENGINE_DEFAULT_MAX_LOGS, 0, INT64_C(1) << 50},
    {N_MAX_LOG_BYTES, offsetof(job_t, max_log_bytes), BW_JSENGINE_DEFAULT_MAX_LOG_BYTES, 0, INT64_C(1) << 50},
};

static bool parse_limits(job_t *j, JSObjectRef req)
{
    for (size_t i = 0; i < sizeof limit_fields / sizeof limit_fields[0]; i++) {
        JSValueRef v = JSObjectGetProperty(j->ctx, req, j->eng->names[limit_fields[i].name], NULL);
        int64_t *dst = (int64_t *)((char *)j + limit_fields[i].offset);
        double d = JSValueIsNumber(j->ctx, v) ? JSValueToNumber(j->ctx, v, NULL) : NAN;
        *dst = limit_fields[i].def;
        if (JSValueIsUndefined(j->ctx, v))
            continue;
        if (!(d >= (double)limit_fields[i].min && d <= (double)limit_fields[i].max) || d != floor(d)) {
            char *msg =
                bw_asprintf("%s must be an integer between %lld and %lld", name_text[limit_fields[i].name],
                            (long long)limit_fields[i].min, (long long)limit_fields[i].max);
            fail_str(j, "INVALID_ARGS", msg);
            free(msg);
            return false;
        }
        *dst = (int64_t)d;
    }
    return true;
}

/* The id as JSON text: integers as such, anything else as JSON.stringify writes it, absent as null. */
static void parse_id(job_t *j, JSObjectRef req)
{
    JSValueRef v = JSObjectGetProperty(j->ctx, req, j->eng->names[N_ID], NULL);
    double d = JSValueIsNumber(j->ctx, v) ? JSValueToNumber(j->ctx, v, NULL) : NAN;
    JSStringRef s = NULL;
    if (d == floor(d) && fabs(d) < 9007199254740992.0)
        bw_buf_printf(&j->id, "%lld", (long long)d);
    else if (!JSValueIsUndefined(j->ctx, v) && (s = JSValueCreateJSONString(j->ctx, v, 0, NULL)) != NULL)
        append_jsstring(&j->id, s);
    if (s != NULL)
        JSStringRelease(s);
    if (j->id.len == 0)
        bw_buf_puts(&j->id, "null");
}

/* Parses the request into the job's context. The script has not run: nothing here can call into it. */
static bool parse_request(job_t *j, const char *text, size_t len)
{
    bw_buf_t *t = &j->eng->text;
    t->len = 0;
    bw_buf_append(t, text, len);
    JSStringRef s = JSStringCreateWithUTF8CString(t->p);
    JSValueRef v = strlen(t->p) == len ? JSValueMakeFromJSONString(j->ctx, s) : NULL;
    JSStringRelease(s);
    if (t->cap > 1024 * 1024) { /* do not keep a huge request's copy */
        bw_buf_dispose(t);
        bw_buf_init(t, 4096);
    }
    if (v == NULL || !JSValueIsObject(j->ctx, v) || JSValueIsArray(j->ctx, v)) {
        bw_buf_puts(&j->id, "null");
        fail_str(j, "INVALID_ARGS", "the request must be a JSON object");
        return false;
    }
    JSObjectRef req = (JSObjectRef)v;
    parse_id(j, req);
    JSValueRef code = JSObjectGetProperty(j->ctx, req, j->eng->names[N_CODE], NULL);
    if (!JSValueIsString(j->ctx, code)) {
        fail_str(j, "INVALID_ARGS", "code must be a string");
        return false;
    }
    j->code = JSValueToStringCopy(j->ctx, code, NULL);
    j->args = JSObjectGetProperty(j->ctx, req, j->eng->names[N_ARGS], NULL);
    if (JSValueIsUndefined(j->ctx, j->args))
        j->args = JSObjectMake(j->ctx, NULL, NULL);
    return parse_limits(j, req);
}

/* ---- the response ---- */

static void write_response(job_t *j, bw_buf_t *out, uint64_t elapsed_ns, uint64_t cpu_ns)
{
    bw_buf_puts(out, "{\"id\":");
    bw_buf_append(out, j->id.p, j->id.len);
    if (j->error_code == NULL) {
        bw_buf_puts(out, ",\"ok\":true");
        if (j->output.len > 0) {
            bw_buf_puts(out, ",\"output\":");
            bw_buf_append(out, j->output.p, j->output.len);
        }
    } else {
        bw_buf_printf(out, ",\"ok\":false,\"code\":\"%s\",\"message\":", j->error_code);
        bw_jsonw_string(out, j->message, strlen(j->message));
        if (j->line > 0)
            bw_buf_printf(out, ",\"line\":%ld", j->line);
        if (j->column > 0)
            bw_buf_printf(out, ",\"column\":%ld", j->column);
    }
    bw_buf_puts(out, ",\"logs\":[");
    bw_buf_append(out, j->logs.p, j->logs.len);
    bw_buf_printf(out, "],\"logs_truncated\":%s,\"elapsed_us\":%llu,\"cpu_us\":%llu}",
                  j->logs_truncated ? "true" : "false", (unsigned long long)(elapsed_ns / 1000),
                  (unsigned long long)(cpu_ns / 1000));
}

/* ---- engine ---- */

/* JavaScriptCore's limit counts the thread's CPU time; jobs have a wall-clock deadline. The limit is
   set to a slice (at most SLICE_MS) after which JavaScriptCore asks this callback, again after every
   further slice, until the deadline has passed: under CPU contention a script stops at most about a
   slice late instead of whenever it has had timeout_ms of CPU. A slice is CPU time, which a starved
   thread gets slowly, and a stop that late comes close to the sandbox's backstop (250 ms past the limit;
   it replaces the process): beside busy processes on 2 cores a 200 ms limit stopped after a median
   280-307 ms (worst 434) with 20 ms slices, 247-250 ms (worst 348) with 5 ms ones, for one callback per
   5 ms of CPU (negligible). */
#define SLICE_MS 5

static bool should_terminate(JSContextRef ctx, void *data)
{
    job_t *j = current;
    if (j == NULL || bw_mono_ns() >= j->deadline_ns) {
        if (j != NULL)
            j->timed_out = true;
        return true;
    }
    /* not yet: setting the limit again starts the next slice (JavaScriptCore does not restart it) */
    JSContextGroupSetExecutionTimeLimit(j->eng->group, (double)j->eng->limit_ms / 1000.0, should_terminate,
                                        NULL);
    return false;
}

static void execute(bw_jsengine_t *e, job_t *j)
{
    int64_t slice = j->timeout_ms < SLICE_MS ? j->timeout_ms : SLICE_MS;
    if (e->limit_ms != slice) {
        JSContextGroupSetExecutionTimeLimit(e->group, (double)slice / 1000.0, should_terminate, NULL);
        e->limit_ms = slice;
    }
    j->deadline_ns = bw_mono_ns() + (uint64_t)j->timeout_ms * 1000000u;
    current = j;
    JSObjectCallAsFunction(j->ctx, e->trampoline, NULL, 0, NULL, NULL);
    current = NULL;
    if (j->timed_out)
        fail_timeout(j);
}

void bw_jsengine_run_frame(bw_jsengine_t *e, const char *req, size_t len, bw_buf_t *out,
                           bw_jsengine_start_cb start, void *ud)
{
    uint64_t t0 = bw_mono_ns(), c0 = bw_thread_cpu_ns();
    job_t j = {.eng = e, .line = -1, .column = -1};
    bw_buf_init(&j.id, 32);
    bw_buf_init(&j.output, 256);
    bw_buf_init(&j.logs, 64);
    bw_jsengine_prepare(e);
    j.ctx = e->realm.ctx;
    if (parse_request(&j, req, len)) {
        if (start != NULL)
            start(ud, j.id.p, j.id.len, j.timeout_ms);
        execute(e, &j);
    }
    write_response(&j, out, bw_mono_ns() - t0, bw_thread_cpu_ns() - c0);
    if (j.code != NULL)
        JSStringRelease(j.code);
    if (++e->realm_jobs >= BW_JSENGINE_REALM_JOBS)
        e->realm_spent = true;
    bw_buf_dispose(&j.id);
    bw_buf_dispose(&j.output);
    bw_buf_dispose(&j.logs);
    free(j.message);
}

json_t *bw_jsengine_run(bw_jsengine_t *e, const json_t *request)
{
    bw_buf_t out;
    char *text = json_dumps(request, JSON_COMPACT | JSON_ENCODE_ANY);
    bw_buf_init(&out, 512);
    bw_jsengine_run_frame(e, text != NULL ? text : "null", text != NULL ? strlen(text) : 4, &out, NULL, NULL);
    json_t *resp = json_loadb(out.p, out.len, JSON_ALLOW_NUL, NULL);
    if (resp == NULL) /* not expected: the text is built to be valid */
        resp = json_pack("{s:n,s:b,s:s,s:s,s:[],s:b,s:i}", "id", "ok", 0, "code", "SCRIPT_RESULT_NOT_JSON",
                         "message", "the engine produced a response that is not valid JSON", "logs",
                         "logs_truncated", 0, "elapsed_us", 0);
    bw_buf_dispose(&out);
    free(text);
    return resp;
}

/* The console's methods, installed in every realm. */
/* __beamline_main(main): the code's last statement hands its `main` over (see js/jsrealm.c). */
static JSValueRef take_main(JSContextRef ctx, JSObjectRef f, JSObjectRef self, size_t argc,
                            const JSValueRef argv[], JSValueRef *exc)
{
    if (current != NULL && argc > 0)
        current->main = argv[0];
    return NULL;
}

/* Math.random: a generator of the job's own (splitmix64, 53 bits per number), seeded from the kernel
   when the job first asks, so that no job can learn or steer another's numbers through the realm. */
static JSValueRef math_random(JSContextRef ctx, JSObjectRef f, JSObjectRef self, size_t argc,
                              const JSValueRef argv[], JSValueRef *exc)
{
    job_t *j = current;
    uint64_t z;
    if (j == NULL)
        return JSValueMakeNumber(ctx, 0.5);
    if (!j->random_seeded) {
        if (getrandom(&j->random, sizeof j->random, 0) != (ssize_t)sizeof j->random)
            j->random = bw_mono_ns() ^ (uint64_t)(uintptr_t)j;
        j->random_seeded = true;
    }
    z = (j->random += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    z ^= z >> 31;
    return JSValueMakeNumber(ctx, (double)(z >> 11) * 0x1.0p-53);
}

/* The engine's natives in every realm. */
static const bw_jsrealm_natives_t natives = {console_log,   console_info, console_warn,
                                             console_error, math_random,  take_main};

/* Creates the jobs' realm; false (after a line on stderr) when it cannot be hardened. */
static bool realm_create(bw_jsengine_t *e)
{
    char err[256];
    /* no job's time limit applies to the hardening (~10 ms, several times that under sanitizers) */
    JSContextGroupClearExecutionTimeLimit(e->group);
    e->limit_ms = 0;
    if (bw_jsrealm_create(&e->realm, e->group, &natives, err, sizeof err)) {
        e->realm_spent = false;
        e->realm_jobs = 0;
        e->realms++;
        return true;
    }
    fprintf(stderr, "js-sandbox: %s\n", err);
    return false;
}

void bw_jsengine_prepare(bw_jsengine_t *e)
{
    if (e->realm_spent)
        bw_jsrealm_release(&e->realm);
    /* The first realm was created with the engine: one that fails now is the engine failing. */
    if (e->realm.ctx == NULL && !realm_create(e))
        abort();
}

bw_jsengine_t *bw_jsengine_create(void)
{
    void *drain_fn = dlsym(RTLD_DEFAULT, DRAIN_SYMBOL);
    if (drain_fn == NULL) {
        fprintf(stderr, "js-sandbox: JavaScriptCore does not export %s; cannot bound microtasks\n",
                DRAIN_SYMBOL);
        return NULL;
    }
    /* JavaScriptCore reads its options from the environment once, when the first VM is created.
       Polling traps: the time limit stops JIT code through a flag it polls rather than through signals
       and faulting code, which the seccomp filter and test harnesses that catch SIGSEGV would break.
       No WebAssembly: no use for data transforms, and its fast memory relies on fault handlers. */
    setenv("JSC_usePollingTraps", "true", 0);
    setenv("JSC_useWasm", "false", 0);
    bw_jsengine_t *e = bw_calloc(1, sizeof *e);
    e->drain = (void (*)(void *))drain_fn;
    e->group = JSContextGroupCreate();
    for (int i = 0; i < N_COUNT; i++)
        e->names[i] = JSStringCreateWithUTF8CString(name_text[i]);
    bw_buf_init(&e->text, 4096);
    e->home = JSGlobalContextCreateInGroup(e->group, NULL);
    e->trampoline = JSObjectMakeFunctionWithCallback(e->home, NULL, trampoline);
    JSValueProtect(e->home, e->trampoline);
    if (!realm_create(e)) {
        bw_jsengine_destroy(e);
        return NULL;
    }
    return e;
}

void bw_jsengine_retire_realm(bw_jsengine_t *e)
{
    e->realm_spent = true;
}

void bw_jsengine_collect(bw_jsengine_t *e)
{
    JSSynchronousGarbageCollectForDebugging(e->home); /* JSGarbageCollect only asks for one */
}

uint64_t bw_jsengine_realms(const bw_jsengine_t *e)
{
    return e->realms;
}

void bw_jsengine_destroy(bw_jsengine_t *e)
{
    if (e == NULL)
        return;
    bw_jsrealm_release(&e->realm);
    JSValueUnprotect(e->home, e->trampoline);
    JSGlobalContextRelease(e->home);
    for (int i = 0; i < N_COUNT; i++)
        JSStringRelease(e->names[i]);
    bw_buf_dispose(&e->text);
    JSContextGroupRelease(e->group);
    free(e);
}
