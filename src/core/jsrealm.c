/*
 * Hardened realm. A fresh JavaScriptCore global context costs ~200 µs of CPU (creating and later
 * collecting ~700 built-in objects), 10-20 times a small script's own cost, so a sandbox keeps one
 * realm for many jobs and makes it impossible for a job to leave anything behind for the next:
 *
 *  - Every built-in is frozen: all objects reachable from the global object through properties,
 *    accessors and prototypes, plus the intrinsics reachable only through instances (iterator,
 *    generator and async prototypes, %TypedArray%, iterator helpers, Intl segments). The global
 *    object's own properties become non-writable and non-configurable; it stays extensible.
 *  - A job's code runs as a direct eval inside a function (`run`), so its var, let, const, class and
 *    function declarations live in that call, not on the global object. What it can still add to the
 *    global object (implicit globals, globalThis.x = ..., indirect eval's vars, `args` and its keys) is
 *    deleted by `clean`, which compares the global's own keys with those recorded at creation; a job
 *    that added one that cannot be deleted, or made the global non-extensible, makes clean() false and
 *    the realm is thrown away.
 *  - Removed because they would carry a job's objects or data into later jobs: WeakRef and
 *    FinalizationRegistry (cleanup callbacks run whenever the collector decides) and RegExp's legacy
 *    static match properties (RegExp.$1, lastMatch, input, ...: the realm's last match).
 *  - Assigning a property that a frozen prototype has (`Point.prototype.toString = ...`, `err.name =
 *    ...`) would fail (the "override mistake"); for the usual ones (Object.prototype's methods and
 *    constructor, the Error prototypes' name, message, constructor and toString, Function.prototype's
 *    toString) the property is an accessor whose setter defines the property on the object assigned
 *    to, as SES does.
 *  - The console (native functions from the engine) is installed before freezing; the run and clean
 *    functions are frozen too (a script reaches `run` as arguments.callee).
 *
 * What a job still shares with later ones: nothing it can write. Its code sees frozen built-ins, so a
 * script that patches them (polyfills) has no effect (TypeError in strict mode), and top-level
 * declarations are not properties of globalThis. Math.random's generator state is the realm's.
 */
#include "core/jsrealm.h"

#include <stdio.h>
#include <string.h>

/* The wrapper jobs run in: sloppy, so that the eval is sloppy unless the code says "use strict". */
static const char run_source[] =
    "(function () { return [eval(arguments[0]), typeof main == 'function' ? main : void 0]; })";

/* Called with (run, log, info, warn, error); returns clean. Strict; runs before any job's code. */
static const char harden_source[] =
    "(function (run, log, info, warn, error) {\n"
    "  'use strict';\n"
    "  const g = globalThis;\n"
    "  const { freeze, isFrozen, isExtensible, getPrototypeOf, getOwnPropertyDescriptor, defineProperty,\n"
    "          hasOwn } = Object;\n"
    "  const { ownKeys, deleteProperty } = Reflect;\n"
    "  const fail = (what) => { throw new TypeError('cannot harden the realm: ' + what); };\n"
    "  defineProperty(g, 'console', { value: { log, info, warn, error, debug: log }, writable: true,\n"
    "                                 enumerable: false, configurable: true });\n"
    "  for (const name of ['WeakRef', 'FinalizationRegistry'])\n"
    "    if (!deleteProperty(g, name)) fail(name);\n"
    "  for (const k of ownKeys(RegExp)) {\n"
    "    const d = getOwnPropertyDescriptor(RegExp, k);\n"
    "    if (typeof k === 'string' && d.get !== undefined && !deleteProperty(RegExp, k)) fail('RegExp.' + k);\n"
    "  }\n"
    "  const enable = (o, names) => {\n"
    "    for (const k of names) {\n"
    "      const d = getOwnPropertyDescriptor(o, k);\n"
    "      if (d === undefined || !('value' in d)) continue;\n"
    "      const value = d.value;\n"
    "      defineProperty(o, k, { enumerable: d.enumerable, configurable: false,\n"
    "        get: function () { return value; },\n"
    "        set: function (v) {\n"
    "          if (this === o) throw new TypeError(\"Cannot assign to read only property '\" + k + \"' of a built-in\");\n"
    "          if (this === null || (typeof this !== 'object' && typeof this !== 'function')) return;\n"
    "          if (hasOwn(this, k)) this[k] = v;\n"
    "          else defineProperty(this, k, { value: v, writable: true, enumerable: true, configurable: true });\n"
    "        } });\n"
    "    }\n"
    "  };\n"
    "  enable(Object.prototype, ['toString', 'valueOf', 'constructor', 'hasOwnProperty', 'isPrototypeOf',\n"
    "                            'propertyIsEnumerable', 'toLocaleString']);\n"
    "  for (const E of [Error, EvalError, RangeError, ReferenceError, SyntaxError, TypeError, URIError,\n"
    "                   AggregateError])\n"
    "    enable(E.prototype, ['name', 'message', 'constructor', 'toString']);\n"
    "  enable(Function.prototype, ['toString']);\n"
    "  const roots = [g, run];\n"
    "  const add = (f) => { try { roots.push(f()); } catch (e) { /* not in this JavaScriptCore */ } };\n"
    "  add(() => getPrototypeOf(function* () {}));\n"
    "  add(() => getPrototypeOf(async function () {}));\n"
    "  add(() => getPrototypeOf(async function* () {}));\n"
    "  add(() => getPrototypeOf((async function* () {})()));\n"
    "  add(() => getPrototypeOf([][Symbol.iterator]()));\n"
    "  add(() => getPrototypeOf(new Map()[Symbol.iterator]()));\n"
    "  add(() => getPrototypeOf(new Set()[Symbol.iterator]()));\n"
    "  add(() => getPrototypeOf(''[Symbol.iterator]()));\n"
    "  add(() => getPrototypeOf(/x/[Symbol.matchAll]('')));\n"
    "  add(() => getPrototypeOf([].values().map((x) => x)));\n"
    "  add(() => getPrototypeOf(Iterator.from({ next() { return { done: true }; } })));\n"
    "  add(() => getPrototypeOf(new Intl.Segmenter().segment('')));\n"
    "  add(() => getPrototypeOf(new Intl.Segmenter().segment('')[Symbol.iterator]()));\n"
    "  add(() => getPrototypeOf(Int8Array));\n"
    "  add(() => getOwnPropertyDescriptor((function () { 'use strict'; return arguments; })(), 'callee').get);\n"
    "  const seen = new Set();\n"
    "  const todo = roots;\n"
    "  while (todo.length > 0) {\n"
    "    const o = todo.pop();\n"
    "    if (o === null || (typeof o !== 'object' && typeof o !== 'function') || seen.has(o)) continue;\n"
    "    seen.add(o);\n"
    "    todo.push(getPrototypeOf(o));\n"
    "    const keys = ownKeys(o);\n"
    "    for (let i = 0; i < keys.length; i++) {\n"
    "      const d = getOwnPropertyDescriptor(o, keys[i]);\n"
    "      if (d === undefined) continue;\n"
    "      if ('value' in d) todo.push(d.value); else todo.push(d.get, d.set);\n"
    "    }\n"
    "  }\n"
    "  for (const o of seen) if (o !== g) freeze(o);\n"
    "  for (const k of ownKeys(g)) {\n"
    "    const d = getOwnPropertyDescriptor(g, k);\n"
    "    if ('value' in d) d.writable = false;\n"
    "    d.configurable = false;\n"
    "    defineProperty(g, k, d);\n"
    "  }\n"
    "  for (const o of seen) if (o !== g && !isFrozen(o)) fail(String(o));\n"
    "  const base = new Set(ownKeys(g));\n"
    "  const count = base.size;\n"
    "  const clean = function () {\n"
    "    let ok = isExtensible(g);\n"
    "    const keys = ownKeys(g);\n"
    "    if (keys.length !== count)\n"
    "      for (let i = 0; i < keys.length; i++)\n"
    "        if (!base.has(keys[i]) && !deleteProperty(g, keys[i])) ok = false;\n"
    "    return ok;\n"
    "  };\n"
    "  freeze(clean);\n"
    "  return clean;\n"
    "})";

static void exception_text(JSContextRef ctx, JSValueRef exc, char *err, size_t errlen)
{
    JSStringRef s = exc != NULL ? JSValueToStringCopy(ctx, exc, NULL) : NULL;
    if (s == NULL) {
        snprintf(err, errlen, "cannot harden the realm");
        return;
    }
    JSStringGetUTF8CString(s, err, errlen);
    JSStringRelease(s);
}

static JSObjectRef eval_function(JSContextRef ctx, const char *source, JSValueRef *exc)
{
    JSStringRef s = JSStringCreateWithUTF8CString(source);
    JSValueRef v = JSEvaluateScript(ctx, s, NULL, NULL, 1, exc);
    JSStringRelease(s);
    if (v == NULL || !JSValueIsObject(ctx, v) || !JSObjectIsFunction(ctx, (JSObjectRef)v))
        return NULL;
    return (JSObjectRef)v;
}

bool bw_jsrealm_create(bw_jsrealm_t *r, JSContextGroupRef group, const bw_jsrealm_console_t *console,
                       char *err, size_t errlen)
{
    JSValueRef exc = NULL;
    memset(r, 0, sizeof *r);
    r->ctx = JSGlobalContextCreateInGroup(group, NULL);
    JSObjectRef run = eval_function(r->ctx, run_source, &exc);
    JSObjectRef harden = run != NULL ? eval_function(r->ctx, harden_source, &exc) : NULL;
    JSValueRef clean = NULL;
    if (harden != NULL) {
        JSValueRef argv[5] = {run, JSObjectMakeFunctionWithCallback(r->ctx, NULL, console->log),
                              JSObjectMakeFunctionWithCallback(r->ctx, NULL, console->info),
                              JSObjectMakeFunctionWithCallback(r->ctx, NULL, console->warn),
                              JSObjectMakeFunctionWithCallback(r->ctx, NULL, console->error)};
        clean = JSObjectCallAsFunction(r->ctx, harden, NULL, 5, argv, &exc);
    }
    if (clean == NULL || !JSValueIsObject(r->ctx, clean)) {
        exception_text(r->ctx, exc, err, errlen);
        JSGlobalContextRelease(r->ctx);
        memset(r, 0, sizeof *r);
        return false;
    }
    r->run = run;
    r->clean = (JSObjectRef)clean;
    JSValueProtect(r->ctx, r->run);
    JSValueProtect(r->ctx, r->clean);
    return true;
}

bool bw_jsrealm_run(const bw_jsrealm_t *r, JSStringRef code, JSValueRef *value, JSValueRef *main,
                    JSValueRef *exc)
{
    JSValueRef arg = JSValueMakeString(r->ctx, code);
    JSValueRef pair = JSObjectCallAsFunction(r->ctx, r->run, NULL, 1, &arg, exc);
    if (pair == NULL) {
        /* eval's SyntaxError carries the line of the eval call: a code that does not parse as a
           script gets the parser's own error, with the line and column in the code */
        JSValueRef syntax = NULL;
        if (!JSCheckScriptSyntax(r->ctx, code, NULL, 1, &syntax) && syntax != NULL)
            *exc = syntax;
        return false;
    }
    /* a fresh array from the frozen Array: its elements are plain own data properties */
    *value = JSObjectGetPropertyAtIndex(r->ctx, (JSObjectRef)pair, 0, NULL);
    *main = JSObjectGetPropertyAtIndex(r->ctx, (JSObjectRef)pair, 1, NULL);
    return true;
}

bool bw_jsrealm_clean(const bw_jsrealm_t *r)
{
    JSValueRef ok = JSObjectCallAsFunction(r->ctx, r->clean, NULL, 0, NULL, NULL);
    return ok != NULL && JSValueToBoolean(r->ctx, ok);
}

void bw_jsrealm_release(bw_jsrealm_t *r)
{
    if (r->ctx == NULL)
        return;
    JSValueUnprotect(r->ctx, r->run);
    JSValueUnprotect(r->ctx, r->clean);
    JSGlobalContextRelease(r->ctx);
    memset(r, 0, sizeof *r);
}
