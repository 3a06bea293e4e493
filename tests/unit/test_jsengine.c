/* Unit tests for js/jsengine.c: every semantic of the javascript job type, in process. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "js/jsengine.h"
#include "util/buf.h"
#include "util/clock.h"

static bw_jsengine_t *eng;

static int setup(void **state)
{
    eng = bw_jsengine_create();
    return eng != NULL ? 0 : -1;
}

static int teardown(void **state)
{
    bw_jsengine_destroy(eng);
    return 0;
}

/* Runs code with args (JSON text, NULL for none) and extra request fields (a JSON object text or NULL).
   Without a timeout_ms in extra the job gets 60 s, a limit a loaded machine cannot reach by accident
   (heavy scripts took 7 s of wall time for 1 s of CPU beside busy processes): only the tests that are
   about the time limit set one. */
static json_t *run_req(const char *code, const char *args, const char *extra)
{
    json_t *req = extra != NULL ? json_loads(extra, 0, NULL) : json_object();
    assert_non_null(req);
    if (json_object_get(req, "timeout_ms") == NULL)
        json_object_set_new(req, "timeout_ms", json_integer(60000));
    json_object_set_new(req, "id", json_integer(7));
    json_object_set_new(req, "code", json_string(code));
    if (args != NULL) {
        json_t *a = json_loads(args, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        assert_non_null(a);
        json_object_set_new(req, "args", a);
    }
    json_t *resp = bw_jsengine_run(eng, req);
    json_decref(req);
    assert_non_null(resp);
    assert_int_equal(json_integer_value(json_object_get(resp, "id")), 7);
    assert_true(json_is_array(json_object_get(resp, "logs")));
    assert_true(json_is_boolean(json_object_get(resp, "logs_truncated")));
    assert_true(json_is_integer(json_object_get(resp, "elapsed_us")));
    return resp;
}

static void fail_resp(const char *what, const char *code, json_t *resp)
{
    char *text = json_dumps(resp, JSON_COMPACT);
    fail_msg("%s for `%s`: %s", what, code, text);
}

/* Runs code and checks that it succeeds with the output given as JSON text (NULL: no output). */
static json_t *expect_output(const char *code, const char *args, const char *expected)
{
    json_t *resp = run_req(code, args, NULL);
    json_t *out = json_object_get(resp, "output");
    if (!json_is_true(json_object_get(resp, "ok")))
        fail_resp("unexpected failure", code, resp);
    if (expected == NULL) {
        if (out != NULL)
            fail_resp("unexpected output", code, resp);
        return resp;
    }
    json_t *want = json_loads(expected, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    assert_non_null(want);
    if (out == NULL || !json_equal(out, want))
        fail_resp("wrong output", code, resp);
    json_decref(want);
    return resp;
}

static void output_is(const char *code, const char *args, const char *expected)
{
    json_decref(expect_output(code, args, expected));
}

/* Runs code and checks the error code and that the message contains `part`. Returns the response. */
static json_t *expect_error_req(const char *code, const char *args, const char *extra, const char *err,
                                const char *part)
{
    json_t *resp = run_req(code, args, extra);
    const char *got = json_string_value(json_object_get(resp, "code"));
    const char *msg = json_string_value(json_object_get(resp, "message"));
    if (!json_is_false(json_object_get(resp, "ok")) || got == NULL || strcmp(got, err) != 0 || msg == NULL ||
        strstr(msg, part) == NULL)
        fail_resp(err, code, resp);
    if (json_object_get(resp, "output") != NULL)
        fail_resp("output on error", code, resp);
    return resp;
}

static void error_is(const char *code, const char *err, const char *part)
{
    json_decref(expect_error_req(code, NULL, NULL, err, part));
}

static void test_args_become_globals(void **state)
{
    json_t *r = expect_output("x * 2", "{\"x\": 21}", "42");
    assert_true(json_is_integer(json_object_get(r, "output")));
    json_decref(r);
    output_is("args.items.map(i => i.p * i.q).reduce((a, b) => a + b, 0)",
              "{\"items\":[{\"p\":2,\"q\":3},{\"p\":4,\"q\":5}]}", "26");
    output_is("[args.a, a, b.c, typeof args]", "{\"a\":\"s\",\"b\":{\"c\":null}}",
              "[\"s\",\"s\",null,\"object\"]");
    output_is("args", "{\"args\":1,\"k\":2}", "{\"args\":1,\"k\":2}"); /* `args` is always the whole */
    output_is("[args.length, typeof length]", "[1,2]", "[2,\"undefined\"]");
    output_is("args", "\"text\"", "\"text\"");
    output_is("args", "null", "null");
    output_is("args", NULL, "{}");
    output_is("args.s", "{\"s\":\"a\\u0000b\"}", "\"a\\u0000b\"");
}

static void test_promises(void **state)
{
    output_is("Promise.resolve(5)", NULL, "5");
    output_is("(async () => { await null; await null; return {a: [1]} })()", NULL, "{\"a\":[1]}");
    output_is("new Promise(r => r(x)).then(v => v + 1)", "{\"x\":1}", "2");
    output_is("Promise.resolve()", NULL, NULL);
    /* microtasks run before the completion value is converted */
    output_is("var r = []; Promise.resolve(1).then(v => r.push(v)); r", NULL, "[1]");
    json_decref(
        expect_error_req("Promise.reject(new Error('boom'))", NULL, NULL, "SCRIPT_ERROR", "Error: boom"));
    error_is("(async () => { throw new TypeError('bad') })()", "SCRIPT_ERROR", "TypeError: bad");
    error_is("Promise.reject('plain')", "SCRIPT_ERROR", "plain");
    error_is("new Promise(() => {})", "SCRIPT_ERROR", "never settled");
    /* thenables are awaited through their then, as await does */
    output_is("({then(resolve) { resolve([5]) }})", NULL, "[5]");
    output_is("({then(resolve) { Promise.resolve().then(() => resolve('late')) }})", NULL, "\"late\"");
    error_is("({then(resolve, reject) { reject(new Error('t')) }})", "SCRIPT_ERROR", "Error: t");
    error_is("({then() { throw new RangeError('in then') }})", "SCRIPT_ERROR", "RangeError: in then");
    error_is("({then() {}})", "SCRIPT_ERROR", "never settled");
    error_is("({get then() { throw 'getter' }})", "SCRIPT_ERROR", "getter");
    output_is("({then: 5})", NULL, "{\"then\":5}");
    output_is("({then(resolve) { resolve({then(r) { r(Promise.resolve(7)) }}) }})", NULL, "7");
    error_is("const t = {then(resolve) { resolve(t) }}; t", "SCRIPT_ERROR", "keeps settling");
    error_is("new Promise(r => Promise.resolve().then(() => 0))", "SCRIPT_ERROR", "never settled");
}

/* A script stopped by its time limit ran at least limit_ms (the limit is wall-clock time) and was stopped
   well within 5 s: a bound that holds on a loaded machine, where a tighter one (the engine's own stop
   comes about one 5 ms slice of CPU time late, which is much more wall time on a busy machine) failed. */
static void expect_stopped_after_limit(const char *what, uint64_t t0, uint64_t limit_ms)
{
    uint64_t took = bw_mono_ms() - t0;
    if (took < limit_ms || took >= 5000)
        fail_msg("%s with a %llu ms limit stopped after %llu ms", what, (unsigned long long)limit_ms,
                 (unsigned long long)took);
}

static void test_infinite_promise_chain_times_out(void **state)
{
    const char *chains[] = {"function f() { return Promise.resolve().then(f) } f()",
                            "(async () => { for (;;) await null })()",
                            "function f() { return Promise.resolve().then(f) } f(); 1"};
    for (size_t i = 0; i < 3; i++) {
        uint64_t t0 = bw_mono_ms();
        json_t *r = expect_error_req(chains[i], NULL, "{\"timeout_ms\": 200}", "SCRIPT_TIMEOUT", "200 ms");
        expect_stopped_after_limit("a promise chain", t0, 200);
        json_decref(r);
    }
    output_is("1", NULL, "1"); /* the engine still works */
}

static void test_output_conversion(void **state)
{
    output_is("undefined", NULL, NULL);
    output_is("void 0", NULL, NULL);
    output_is("({toJSON() { return undefined }})", NULL, NULL);
    error_is("(function () {})", "SCRIPT_RESULT_NOT_JSON", "function");
    error_is("() => 1", "SCRIPT_RESULT_NOT_JSON", "function");
    error_is("Symbol('s')", "SCRIPT_RESULT_NOT_JSON", "symbol");
    error_is("NaN", "SCRIPT_RESULT_NOT_JSON", "NaN");
    error_is("1/0", "SCRIPT_RESULT_NOT_JSON", "Infinity");
    error_is("[1, [2, -1/0]]", "SCRIPT_RESULT_NOT_JSON", "-Infinity");
    error_is("({a: {b: 0/0}})", "SCRIPT_RESULT_NOT_JSON", "NaN");
    error_is("({toJSON() { return [Infinity] }})", "SCRIPT_RESULT_NOT_JSON", "Infinity");
    error_is("10n", "SCRIPT_RESULT_NOT_JSON", "BigInt");
    error_is("({a: [1n]})", "SCRIPT_RESULT_NOT_JSON", "BigInt");
    error_is("var a = {}; a.self = a; a", "SCRIPT_RESULT_NOT_JSON", "cyclic");
    error_is("({toJSON() { throw new Error('nope') }})", "SCRIPT_RESULT_NOT_JSON", "Error: nope");
    output_is("[null, 'null', {n: null}]", NULL, "[null,\"null\",{\"n\":null}]");
    output_is("({f() {}, u: undefined, s: Symbol(), a: 1})", NULL, "{\"a\":1}"); /* as JSON.stringify */
    output_is("[undefined, function () {}, Symbol()]", NULL, "[null,null,null]");
    output_is("new Date(0)", NULL, "\"1970-01-01T00:00:00.000Z\"");
    output_is("'é😀\\u0000'", NULL, "\"é😀\\u0000\"");
    output_is("'a\\ud800b\\udc00'", NULL, "\"a\\ufffdb\\ufffd\"");
    output_is("true", NULL, "true");
    output_is("-0", NULL, "0");

    json_t *r = expect_output("42", NULL, "42");
    assert_true(json_is_integer(json_object_get(r, "output")));
    json_decref(r);
    r = expect_output("[1.5, 2**53, 1e20, 1e300]", NULL, "[1.5, 9007199254740992, 1e20, 1e300]");
    json_t *out = json_object_get(r, "output");
    assert_true(json_is_real(json_array_get(out, 0)));
    assert_true(json_is_integer(json_array_get(out, 1)));
    assert_true(json_is_real(json_array_get(out, 2))); /* beyond int64: a real, not a parse failure */
    json_decref(r);
}

static void test_output_size_limit(void **state)
{
    const char *limit = "{\"max_output_bytes\": 10}";
    json_decref(
        expect_error_req("'x'.repeat(100)", NULL, limit, "SCRIPT_OUTPUT_TOO_LARGE", "max_output_bytes"));
    json_decref(expect_error_req("'x'.repeat(9)", NULL, limit, "SCRIPT_OUTPUT_TOO_LARGE", "")); /* 11 bytes */
    json_decref(expect_error_req("'é'.repeat(5)", NULL, limit, "SCRIPT_OUTPUT_TOO_LARGE", "")); /* 12 bytes */
    json_t *r = run_req("'x'.repeat(8)", NULL, limit); /* exactly 10 bytes */
    assert_true(json_is_true(json_object_get(r, "ok")));
    json_decref(r);
    r = run_req("[1,2,3,4,5]", NULL, "{\"max_output_bytes\": 11}");
    assert_true(json_is_true(json_object_get(r, "ok")));
    json_decref(r);
}

static const char *log_message(json_t *resp, size_t i, const char *level)
{
    json_t *e = json_array_get(json_object_get(resp, "logs"), i);
    assert_non_null(e);
    assert_string_equal(json_string_value(json_object_get(e, "level")), level);
    return json_string_value(json_object_get(e, "message"));
}

static void test_console_capture(void **state)
{
    json_t *r = expect_output("console.log('a', 1, {b: [2]}, null, undefined, true);"
                              "console.info('i'); console.warn('w'); console.error(new Error('e'));"
                              "console.debug('d'); console.log(Symbol('s'), () => 1, 10n, 'x\\ud800'); 5",
                              NULL, "5");
    assert_int_equal(json_array_size(json_object_get(r, "logs")), 6);
    assert_string_equal(log_message(r, 0, "log"), "a 1 {\"b\":[2]} null undefined true");
    assert_string_equal(log_message(r, 1, "info"), "i");
    assert_string_equal(log_message(r, 2, "warn"), "w");
    assert_string_equal(log_message(r, 3, "error"), "Error: e");
    assert_string_equal(log_message(r, 4, "log"), "d");
    assert_string_equal(log_message(r, 5, "log"), "Symbol(s) () => 1 10 x\xef\xbf\xbd");
    assert_true(json_is_false(json_object_get(r, "logs_truncated")));
    json_decref(r);

    /* logs come back with errors too, including those of microtasks that ran before the failure */
    r = expect_error_req("console.log('before'); Promise.resolve().then(() => console.log('later'));"
                         "null.x",
                         NULL, NULL, "SCRIPT_ERROR", "TypeError");
    assert_string_equal(log_message(r, 0, "log"), "before");
    assert_string_equal(log_message(r, 1, "log"), "later");
    json_decref(r);
    r = run_req("console.log('next job')", NULL, NULL); /* nothing of the last job shows up here */
    assert_int_equal(json_array_size(json_object_get(r, "logs")), 1);
    json_decref(r);

    /* the console works when detached and through call/apply */
    r = expect_output(
        "const l = console.log; l('x'); [1, 2].forEach(console.log); console.log.apply(null, ['y'])", NULL,
        NULL);
    assert_int_equal(json_array_size(json_object_get(r, "logs")), 4);
    assert_string_equal(log_message(r, 1, "log"), "1 0 [1,2]");
    json_decref(r);
}

static void test_console_limits(void **state)
{
    json_t *r = run_req("for (let i = 0; i < 10; i++) console.log(i); 1", NULL, "{\"max_logs\": 3}");
    assert_int_equal(json_array_size(json_object_get(r, "logs")), 3);
    assert_true(json_is_true(json_object_get(r, "logs_truncated")));
    json_decref(r);
    r = run_req("console.log('12345'); console.log('67890'); console.log('x'); 1", NULL,
                "{\"max_log_bytes\": 8}");
    assert_int_equal(json_array_size(json_object_get(r, "logs")), 1);
    assert_true(json_is_true(json_object_get(r, "logs_truncated")));
    json_decref(r);
    r = run_req("console.log('x'.repeat(1e8)); for (let i = 0; i < 1e5; i++) console.log(i); 1", NULL, NULL);
    assert_int_equal(json_array_size(json_object_get(r, "logs")), 0);
    assert_true(json_is_true(json_object_get(r, "logs_truncated")));
    assert_true(json_is_true(json_object_get(r, "ok")));
    json_decref(r);
    /* a getter that logs while its object is being formatted counts against the same budget */
    r = run_req("console.log({get a() { console.log('inner'); return 1 }}); 1", NULL, "{\"max_logs\": 1}");
    assert_int_equal(json_array_size(json_object_get(r, "logs")), 1);
    assert_string_equal(log_message(r, 0, "log"), "inner");
    assert_true(json_is_true(json_object_get(r, "logs_truncated")));
    json_decref(r);
    r = run_req("console.log('1234'); console.log('5678'); 1", NULL, "{\"max_log_bytes\": 8}");
    assert_int_equal(json_array_size(json_object_get(r, "logs")), 2);
    assert_true(json_is_false(json_object_get(r, "logs_truncated")));
    json_decref(r);
}

static void test_fresh_state_per_job(void **state)
{
    output_is("globalThis.leak = 1; Object.prototype.polluted = 1; Array.prototype.map = null;"
              "JSON.stringify = () => 'hacked'; Promise = null; console.log = null; var v = 2; 1",
              NULL, "1");
    output_is("[typeof leak, typeof ({}).polluted, typeof [].map, typeof v, JSON.stringify([1]),"
              " typeof Promise, typeof console.log]",
              NULL,
              "[\"undefined\",\"undefined\",\"function\",\"undefined\",\"[1]\",\"function\",\"function\"]");
    /* the built-ins the engine uses after the script ran cannot be replaced by it */
    output_is("Promise.prototype.then = function () { throw 1 }; Promise.resolve(3)", NULL, "3");
    error_is("globalThis.Error = null; throw new TypeError('x')", "SCRIPT_ERROR", "TypeError: x");
    output_is("typeof Error", NULL, "\"function\"");
}

/* Every way a job can add to the global object: all of it is gone for the next job, whose own
   declarations of the same names work. */
static void test_globals_do_not_survive(void **state)
{
    output_is("implicit = 1; globalThis.prop = 2; var v = 3; function f() {} let l = 4; const c = 5;"
              " class K {} (0, eval)('var ie = 6; function ief() {}');"
              " Object.defineProperty(globalThis, 'acc', { get() { return 7; }, configurable: true });"
              " globalThis[Symbol.for('s')] = 8; this.viaThis = 9;"
              " [implicit, prop, v, typeof f, l, c, typeof K, ie, typeof ief, acc, viaThis]",
              NULL, "[1,2,3,\"function\",4,5,\"function\",6,\"function\",7,9]");
    output_is("[typeof implicit, typeof prop, typeof v, typeof f, typeof l, typeof c, typeof K, typeof ie,"
              " typeof ief, typeof acc, typeof globalThis[Symbol.for('s')], typeof viaThis]",
              NULL,
              "[\"undefined\",\"undefined\",\"undefined\",\"undefined\",\"undefined\",\"undefined\","
              "\"undefined\",\"undefined\",\"undefined\",\"undefined\",\"undefined\",\"undefined\"]");
    output_is("let l = 1; const c = 2; class K {} var v = 3; l + c + v", NULL, "6");
    /* args and its keys are the job's */
    output_is("[a, args.a]", "{\"a\": 1}", "[1,1]");
    output_is("[typeof a, typeof args]", NULL, "[\"undefined\",\"object\"]");
    /* a global that cannot be deleted, or a global object closed to additions, retires the realm */
    output_is("Object.defineProperty(globalThis, 'stuck', { value: 1 }); stuck", NULL, "1");
    output_is("typeof stuck", NULL, "\"undefined\"");
    output_is("Object.freeze(globalThis); 1", NULL, "1");
    output_is("late = 5; late", NULL, "5");
    /* so does a job that timed out, whatever it was doing */
    json_decref(expect_error_req("extra = 1; while (true) {}", NULL, "{\"timeout_ms\": 50}", "SCRIPT_TIMEOUT", ""));
    output_is("typeof extra", NULL, "\"undefined\"");
}

/* Built-ins are frozen, including the intrinsics reachable only through instances, the console and the
   function the code runs in: a job cannot stash anything where the next one would find it. */
static void test_builtins_are_frozen(void **state)
{
    /* everything reachable from the global object, through properties, accessors and prototypes (but
       the job's own args, and Object.prototype and Array.prototype, which are checked after each job) */
    output_is("const seen = new Set([args]), todo = [globalThis], open = [];"
              "while (todo.length) { const o = todo.pop();"
              "  if (o === null || (typeof o !== 'object' && typeof o !== 'function') || seen.has(o)) continue;"
              "  seen.add(o); if (o !== globalThis && !Object.isFrozen(o)) open.push(o);"
              "  todo.push(Object.getPrototypeOf(o));"
              "  for (const k of Reflect.ownKeys(o)) { const d = Object.getOwnPropertyDescriptor(o, k);"
              "    if ('value' in d) todo.push(d.value); else todo.push(d.get, d.set); } }"
              "[seen.size > 500, open.length, open.includes(Object.prototype), open.includes(Array.prototype)]",
              NULL, "[true,2,true,true]");
    /* the global's own properties cannot be changed, but for args (whose value is the job's) */
    output_is("Reflect.ownKeys(globalThis).filter(k => { const d = Object.getOwnPropertyDescriptor(globalThis, k);"
              " return d.configurable || d.writable; }).map(String)",
              NULL, "[\"args\"]");
    /* intrinsics reachable only through instances */
    output_is("const P = Object.getPrototypeOf;"
              "const objs = [P(function* () {}), P(async function () {}), P(async function* () {}),"
              " P(P((function* () {})())), P(P((async function* () {})())), P(P(P((async function* () {})()))),"
              " P([].values()), P(P([].values())), P(new Map().entries()), P(new Set().values()),"
              " P(''[Symbol.iterator]()), P('a'.matchAll(/a/g)), P([].values().map(x => x)),"
              " P(Iterator.from({ next() { return { done: true }; } })), P(Int8Array), P(Int8Array.prototype),"
              " P(new Intl.Segmenter().segment('a')), P(new Intl.Segmenter().segment('a')[Symbol.iterator]()),"
              " Object.getOwnPropertyDescriptor((function () { 'use strict'; return arguments; })(), 'callee').get,"
              " console, console.log, P(console.log), Math.random, __beamline_main];"
              "objs.map((o, i) => Object.isFrozen(o) ? -1 : i).filter(i => i !== -1)",
              NULL, "[]");
    /* writes to frozen built-ins have no effect; in strict mode they throw */
    output_is("Math.PI = 3; JSON.parse = null; console.stash = 1; Math.random = () => 4; Map.prototype.x = 1;"
              " [Math.PI > 3, typeof JSON.parse, typeof console.stash, Math.random() < 1, typeof new Map().x]",
              NULL, "[true,\"function\",\"undefined\",true,\"undefined\"]");
    error_is("'use strict'; Map.prototype.sum = function () {}", "SCRIPT_ERROR", "TypeError");
    output_is("'use strict'; Error.prototype.toString = null; typeof Error.prototype.toString", NULL,
              "\"function\"");
    /* what would carry a job's data into the next one is not there */
    output_is("/sec(ret)/.exec('secret'); 'secret'.replace(/(c)/, 'x');"
              " [typeof RegExp.$1, typeof RegExp.lastMatch, typeof RegExp.input, typeof RegExp['$_'],"
              "  typeof WeakRef, typeof FinalizationRegistry]",
              NULL,
              "[\"undefined\",\"undefined\",\"undefined\",\"undefined\",\"undefined\",\"undefined\"]");
    output_is("'abc'.replace(/(b)/, '[$1]')", NULL, "\"a[b]c\"");
}

/* Object.prototype and Array.prototype stay extensible (non-extensible, they would slow every array
   down): a job may add to them, for itself; clean() deletes what it added, or the next job runs in a
   new realm. */
static void test_object_and_array_prototypes(void **state)
{
    output_is("Object.prototype.polluted = 1; Array.prototype.sum = function () { return this.reduce((a, b) => a + b, 0); };"
              " [({}).polluted, [1, 2, 3].sum()]",
              NULL, "[1,6]");
    output_is("[typeof ({}).polluted, typeof [].sum]", NULL, "[\"undefined\",\"undefined\"]");
    /* every kind of change is noticed */
    static const char *const changes[] = {
        "Array.prototype.map = function () { return 'evil'; }",
        "delete Array.prototype.flat",
        "Object.defineProperty(Array.prototype, 'map', { enumerable: true })",
        "Object.preventExtensions(Object.prototype)",
        "Object.setPrototypeOf(Array.prototype, null)",
        "Array.prototype[0] = 'zero'",
        "Array.prototype.length = 0; Object.defineProperty(Array.prototype, 'length', { writable: false })",
        "Object.prototype[Symbol.iterator] = function* () { yield 1; }",
        "Object.defineProperty(Object.prototype, '__proto__', { get() { return null; } })",
    };
    for (size_t i = 0; i < sizeof changes / sizeof changes[0]; i++) {
        json_decref(run_req(changes[i], NULL, NULL));
        output_is("[[1, 2].map(x => x * 2), typeof [].flat, Object.keys([]).length, Object.isExtensible({}.__proto__),"
                  " Object.getPrototypeOf(Array.prototype) === Object.prototype, [][0], [...[3]],"
                  " typeof ({})[Symbol.iterator], Object.getPrototypeOf({}) === Object.prototype]",
                  NULL, "[[2,4],\"function\",0,true,true,null,[3],\"undefined\",true]");
    }
    /* what can be undone is (no new realm): additions; what cannot be changed is not */
    static const char *const undone[] = {
        "Array.prototype.flat = Array.prototype.flat || function () {}; [[1], [2]].flat()",
        "Array.prototype.sum = function () { return 1; }; Object.prototype.x = 2; [].sum() + ({}).x",
        "Array.prototype.map = null; Object.defineProperty(Object.prototype, 'value', { get() { throw 1; }, configurable: true }); 0",
        "delete Array.prototype.flat; Array.prototype.length = 3; 0",
        "Object.defineProperty(Array.prototype, 'map', { enumerable: true }); Object.keys([]).length",
    };
    for (size_t i = 0; i < sizeof undone / sizeof undone[0]; i++) {
        uint64_t realms = bw_jsengine_realms(eng);
        json_decref(run_req(undone[i], NULL, NULL));
        output_is("[[1, 2].map(x => x * 2), typeof [].flat, typeof [].sum, typeof ({}).x, Object.keys([]).length,"
                  " Object.getPrototypeOf(Array.prototype) === Object.prototype, typeof ({}).value]",
                  NULL, "[[2,4],\"function\",\"undefined\",\"undefined\",0,true,\"undefined\"]");
        if (bw_jsengine_realms(eng) != realms)
            fail_msg("a new realm after `%s`", undone[i]);
    }
    /* what cannot, and what makes the global object unfit, costs one */
    static const char *const spent[] = {
        "Array.prototype[0] = 'zero'", "Object.preventExtensions(Array.prototype)",
        "Object.defineProperty(Object.prototype, 'value', { get() { throw 1; } })", /* not configurable */
        "Object.setPrototypeOf(Array.prototype, null)",
        "Object.defineProperty(Array.prototype, 'length', { writable: false })",
        "Object.defineProperty(globalThis, 'stuck', { value: 1 })", "Object.preventExtensions(globalThis)",
    };
    for (size_t i = 0; i < sizeof spent / sizeof spent[0]; i++) {
        uint64_t realms = bw_jsengine_realms(eng);
        json_decref(run_req(spent[i], NULL, NULL));
        output_is("[[][0], Object.isExtensible(Array.prototype), typeof stuck]", NULL,
                  "[null,true,\"undefined\"]");
        if (bw_jsengine_realms(eng) != realms + 1)
            fail_msg("no new realm after `%s`", spent[i]);
    }
}

/* Scripts that redeclare built-in names, strict scripts with main, and the top-level scope. */
static void test_script_forms(void **state)
{
    output_is("var JSON = JSON || {}; JSON.stringify({ a: 1 })", NULL, "\"{\\\"a\\\":1}\"");
    json_t *r = expect_output("var console = console || { log() {} }; console.log('kept'); 1", NULL, "1");
    assert_string_equal(log_message(r, 0, "log"), "kept");
    json_decref(r);
    output_is("'use strict'; function main(a) { return a.x * 10; } undefined", "{\"x\": 2}", "20");
    output_is("'use strict'; var main = (a) => a.x + 1; undefined", "{\"x\": 2}", "3");
    output_is("const main = (a) => a.x + 2;", "{\"x\": 2}", "4");
    output_is("function main(a) { return a.x; } 7", "{\"x\": 2}", "7"); /* a completion value wins */
    output_is("[typeof main, Reflect.ownKeys(globalThis).includes('__beamline_m'), typeof args]", NULL,
              "[\"undefined\",false,\"object\"]");
    output_is("var top = 1; [this === globalThis, globalThis.top, typeof arguments]", NULL,
              "[true,1,\"undefined\"]");
    /* Math.random: a sequence of the job's own, different in every job */
    output_is("const a = Array.from({ length: 100 }, Math.random); [a.every(x => x >= 0 && x < 1), new Set(a).size]",
              NULL, "[true,100]");
    json_t *r1 = run_req("Array.from({ length: 8 }, Math.random)", NULL, NULL);
    json_t *r2 = run_req("Array.from({ length: 8 }, Math.random)", NULL, NULL);
    assert_false(json_equal(json_object_get(r1, "output"), json_object_get(r2, "output")));
    json_decref(r1);
    json_decref(r2);
}

/* Assigning a property that a frozen prototype also has works on the object assigned to (the usual
   names; SES's "override mistake" repair). */
static void test_overriding_inherited_names(void **state)
{
    output_is("function P() {} P.prototype.toString = function () { return 'p'; };"
              " P.prototype.valueOf = function () { return 41; };"
              " const o = {}; o.hasOwnProperty = 1; o.constructor = 2;"
              " const e = new Error('m'); e.name = 'Custom'; e.message = 'n';"
              " class E2 extends TypeError { constructor() { super('x'); this.name = 'E2'; } }"
              " function g() {} g.toString = () => 'g';"
              " [String(new P()), new P() + 1, o.hasOwnProperty, o.constructor, String(e), new E2().name, String(g),"
              "  ({}).toString(), Object.prototype.hasOwnProperty.call({ a: 1 }, 'a')]",
              NULL, "[\"p\",42,1,2,\"Custom: n\",\"E2\",\"g\",\"[object Object]\",true]");
    /* the built-in itself stays as it was */
    output_is("[({}).toString === Object.prototype.toString, new Error('z').name, String(function f() {}).length > 0]",
              NULL, "[true,\"Error\",true]");
}

static void test_no_host_access(void **state)
{
    output_is("[typeof require, typeof process, typeof fetch, typeof setTimeout, typeof setInterval,"
              " typeof XMLHttpRequest, typeof module, typeof Deno, typeof Bun, typeof print, typeof load,"
              " typeof readFile, typeof $vm, typeof gc, typeof WebAssembly]",
              NULL,
              "[\"undefined\",\"undefined\",\"undefined\",\"undefined\",\"undefined\",\"undefined\","
              "\"undefined\",\"undefined\",\"undefined\",\"undefined\",\"undefined\",\"undefined\","
              "\"undefined\",\"undefined\",\"undefined\"]");
    error_is("import('x')", "SCRIPT_ERROR", "");
    error_is("import('/etc/passwd')", "SCRIPT_ERROR", "");
    error_is("import x from 'y'; 1", "SCRIPT_ERROR", "SyntaxError");
}

static void test_time_limit(void **state)
{
    uint64_t t0 = bw_mono_ms();
    json_decref(
        expect_error_req("while (true) {}", NULL, "{\"timeout_ms\": 200}", "SCRIPT_TIMEOUT", "200 ms"));
    expect_stopped_after_limit("while (true) {}", t0, 200);
    /* a timeout also ends a loop inside a microtask, and the logs written until then come back */
    json_t *r = expect_error_req("console.log('start'); Promise.resolve().then(() => { for (;;) {} }); 1",
                                 NULL, "{\"timeout_ms\": 100}", "SCRIPT_TIMEOUT", "");
    assert_string_equal(log_message(r, 0, "log"), "start");
    json_decref(r);
    json_decref(expect_error_req("for (;;) { try { while (true) {} } catch (e) {} }", NULL,
                                 "{\"timeout_ms\": 100}", "SCRIPT_TIMEOUT", ""));
    output_is("let s = 0; for (let i = 0; i < 1e6; i++) s += i; s", NULL, "499999500000");
}

static void test_runaway_scripts_are_errors(void **state)
{
    error_is("function f() { f() } f()", "SCRIPT_ERROR", "RangeError");
    error_is("function f() { return [f()] } f()", "SCRIPT_ERROR", "RangeError");
    error_is("'x'.repeat(2**31)", "SCRIPT_ERROR", "RangeError");
    error_is("let s = 'x'.repeat(2**28); s + s + s + s + s + s + s + s", "SCRIPT_ERROR", "RangeError");
    error_is("new Array(2**32)", "SCRIPT_ERROR", "RangeError");
    output_is("1", NULL, "1");
}

static void test_script_errors(void **state)
{
    json_t *r = expect_error_req("let a = 1;\nlet b = ;", NULL, NULL, "SCRIPT_ERROR", "SyntaxError");
    assert_int_equal(json_integer_value(json_object_get(r, "line")), 2);
    json_decref(r);
    r = expect_error_req("\n\n  foo()", NULL, NULL, "SCRIPT_ERROR", "ReferenceError");
    assert_int_equal(json_integer_value(json_object_get(r, "line")), 3);
    assert_int_equal(json_integer_value(json_object_get(r, "column")), 6);
    json_decref(r);
    r = expect_error_req("throw 5", NULL, NULL, "SCRIPT_ERROR", "5");
    assert_null(json_object_get(r, "line"));
    json_decref(r);
    error_is("throw {code: 1}", "SCRIPT_ERROR", "{\"code\":1}");
    error_is("throw 'x'.repeat(1e6)", "SCRIPT_ERROR", "too long");
    r = expect_error_req("throw new Error('y'.repeat(5000))", NULL, NULL, "SCRIPT_ERROR", "");
    assert_true(strlen(json_string_value(json_object_get(r, "message"))) <= BW_JSENGINE_MESSAGE_MAX);
    json_decref(r);
}

static void test_invalid_requests(void **state)
{
    json_t *req = json_pack("{s:i}", "id", 3);
    json_t *r = bw_jsengine_run(eng, req);
    assert_string_equal(json_string_value(json_object_get(r, "code")), "INVALID_ARGS");
    assert_int_equal(json_integer_value(json_object_get(r, "id")), 3);
    json_decref(r);
    json_decref(req);
    json_decref(expect_error_req("1", NULL, "{\"timeout_ms\": 0}", "INVALID_ARGS", "timeout_ms"));
    json_decref(expect_error_req("1", NULL, "{\"max_logs\": -1}", "INVALID_ARGS", "max_logs"));
    json_decref(expect_error_req("1", NULL, "{\"max_output_bytes\": \"1\"}", "INVALID_ARGS", "max_output"));
    req = json_pack("{s:s,s:s#}", "id", "job-4", "code", "'a\0b'.length", 12); /* NUL inside a literal */
    r = bw_jsengine_run(eng, req);
    assert_int_equal(json_integer_value(json_object_get(r, "output")), 3);
    assert_string_equal(json_string_value(json_object_get(r, "id")), "job-4");
    json_decref(r);
    json_decref(req);
    json_decref(expect_error_req("1", NULL, "{\"timeout_ms\": 1.5}", "INVALID_ARGS", "timeout_ms"));
    req = json_pack("{s:i,s:i}", "id", 5, "code", 1);
    r = bw_jsengine_run(eng, req);
    assert_string_equal(json_string_value(json_object_get(r, "code")), "INVALID_ARGS");
    assert_int_equal(json_integer_value(json_object_get(r, "id")), 5);
    json_decref(r);
    json_decref(req);
    req = json_array();
    r = bw_jsengine_run(eng, req);
    assert_string_equal(json_string_value(json_object_get(r, "code")), "INVALID_ARGS");
    assert_true(json_is_null(json_object_get(r, "id")));
    json_decref(r);
    json_decref(req);
}

typedef struct started {
    int calls;
    char id[32];
    int64_t timeout_ms;
} started_t;

static void on_start(void *ud, const char *id, size_t id_len, int64_t timeout_ms)
{
    started_t *s = ud;
    s->calls++;
    snprintf(s->id, sizeof s->id, "%.*s", (int)id_len, id);
    s->timeout_ms = timeout_ms;
}

/* Runs a request given as text through bw_jsengine_run_frame; returns the parsed response. */
static json_t *run_text(const char *text, started_t *st)
{
    bw_buf_t out;
    bw_buf_init(&out, 16);
    bw_buf_puts(&out, "xy"); /* the response is appended */
    bw_jsengine_run_frame(eng, text, strlen(text), &out, on_start, st);
    assert_memory_equal(out.p, "xy", 2);
    json_t *r = json_loadb(out.p + 2, out.len - 2, JSON_ALLOW_NUL, NULL);
    if (r == NULL)
        fail_msg("not JSON: %s", out.p);
    bw_buf_dispose(&out);
    return r;
}

static void test_frame_api(void **state)
{
    started_t st = {0};
    json_t *r = run_text("{\"id\":12,\"code\":\"\\u0063onsole.log(args); [x, 1e21, "
                         "2**64]\",\"args\":{\"x\":\"\\ud83d\\ude00\"},"
                         "\"timeout_ms\":321}",
                         &st);
    assert_int_equal(st.calls, 1);
    assert_string_equal(st.id, "12");
    assert_int_equal(st.timeout_ms, 321);
    assert_int_equal(json_integer_value(json_object_get(r, "id")), 12);
    assert_string_equal(json_string_value(json_array_get(json_object_get(r, "output"), 0)),
                        "\xf0\x9f\x98\x80");
    assert_true(json_is_real(json_array_get(json_object_get(r, "output"), 2)));
    assert_string_equal(log_message(r, 0, "log"),
                        "{\"x\":\"\xf0\x9f\x98\x80\"}"); /* console reached via \\u */
    json_decref(r);

    st.calls = 0;
    const char *bad[] = {"", "{", "[1]", "\"s\"", "{\"code\":\"1\"} trailing", "\xff\xfe"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        r = run_text(bad[i], &st);
        assert_string_equal(json_string_value(json_object_get(r, "code")), "INVALID_ARGS");
        assert_true(json_is_null(json_object_get(r, "id")));
        json_decref(r);
    }
    assert_int_equal(st.calls, 0); /* no script ran */
    r = run_text("{\"id\":{\"k\":[1]},\"code\":\"2\"}", &st);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(json_object_get(r, "id"), "k"), 0)),
                     1);
    assert_int_equal(st.timeout_ms, BW_JSENGINE_DEFAULT_TIMEOUT_MS);
    json_decref(r);
}

static void test_prepare_and_reuse(void **state)
{
    bw_jsengine_prepare(eng);
    bw_jsengine_prepare(eng); /* idempotent */
    for (int i = 0; i < 200; i++) {
        json_t *r = run_req("var n = (globalThis.n || 0) + x; n", "{\"x\": 1}", NULL);
        assert_int_equal(json_integer_value(json_object_get(r, "output")), 1);
        json_decref(r);
        if (i % 2 == 0)
            bw_jsengine_prepare(eng);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_args_become_globals),
        cmocka_unit_test(test_promises),
        cmocka_unit_test(test_infinite_promise_chain_times_out),
        cmocka_unit_test(test_output_conversion),
        cmocka_unit_test(test_output_size_limit),
        cmocka_unit_test(test_console_capture),
        cmocka_unit_test(test_console_limits),
        cmocka_unit_test(test_fresh_state_per_job),
        cmocka_unit_test(test_globals_do_not_survive),
        cmocka_unit_test(test_builtins_are_frozen),
        cmocka_unit_test(test_overriding_inherited_names),
        cmocka_unit_test(test_object_and_array_prototypes),
        cmocka_unit_test(test_script_forms),
        cmocka_unit_test(test_no_host_access),
        cmocka_unit_test(test_time_limit),
        cmocka_unit_test(test_runaway_scripts_are_errors),
        cmocka_unit_test(test_script_errors),
        cmocka_unit_test(test_invalid_requests),
        cmocka_unit_test(test_frame_api),
        cmocka_unit_test(test_prepare_and_reuse),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
