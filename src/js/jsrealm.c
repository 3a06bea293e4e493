/*
 * Hardened realm. A fresh JavaScriptCore global context costs ~200 µs of CPU (creating and later
 * collecting ~700 built-in objects), 10-20 times a small script's own cost, so a sandbox keeps one
 * realm for many jobs and makes it impossible for a job to leave anything behind for the next:
 *
 *  - Every built-in is frozen: all objects reachable from the global object through properties,
 *    accessors and prototypes, plus the intrinsics reachable only through instances (iterator,
 *    generator and async prototypes, %TypedArray%, iterator helpers, Intl segments). The global
 *    object's own properties become non-writable and non-configurable; it stays extensible.
 *  - But Object.prototype and Array.prototype stay extensible (their properties locked all the same,
 *    but Array.prototype.length): non-extensible, they put JavaScriptCore's arrays on a slow path
 *    (indexed code 2-3 times slower). clean() deletes what a job added to them; an index added to one
 *    (which also slows the realm's arrays for good), or a change it cannot undo, retires the realm.
 *  - A job's code runs as an indirect eval, global code of its own: its let, const and class
 *    declarations live in it; its var and function declarations, and whatever else it adds to the
 *    global object (implicit globals, globalThis.x = ..., `args` and its keys), are deleted by clean(),
 *    which compares the global's own keys with those recorded at creation. A global that cannot be
 *    deleted, or a global object made non-extensible, makes clean() false and the realm is thrown
 *    away. (A direct eval in a function would keep declarations off the global object, but one job's
 *    `var` would then slow every later job's global lookups: JavaScriptCore's var-injection watchpoint
 *    is the realm's.) The code is followed by a let declaration that hands its `main` to the engine.
 *  - Removed or replaced because they would carry a job's objects or data into later jobs: WeakRef and
 *    FinalizationRegistry (cleanup callbacks run whenever the collector decides), RegExp's legacy
 *    static match properties (RegExp.$1, lastMatch, input, ...: the realm's last match, whose input
 *    clean() also overwrites so that the realm does not keep it alive) and Math.random (the realm's
 *    generator is predictable from its outputs: the engine's gives each job its own, seeded from the
 *    kernel).
 *  - Assigning a property that a frozen prototype has (`err.name = ...`, `fn.toString = ...`) would
 *    fail (the "override mistake"); for the usual ones (Object.prototype's methods and constructor,
 *    the Error prototypes' name, message, constructor and toString, Function.prototype's toString,
 *    Date.prototype's toJSON and toString)
 *    the property is an accessor whose setter defines the property on the object assigned to, as SES
 *    does.
 *  - The engine's natives (console, Math.random, __beamline_main) are installed before freezing; the
 *    run and clean functions are frozen too.
 *
 * What a job still shares with later ones: nothing it can write and a later job read. A job can attach
 * private fields to frozen objects (the spec allows it; no other job can read them): memory only,
 * which the sandbox bounds by replacing a realm when its process grows (cli/cli_sandbox.c).
 */
#include "js/jsrealm.h"

#include <stdio.h>
#include <string.h>

/* What jobs run in: their code as an indirect eval (global code of its own), followed by a statement
   that hands `main` to the engine: a declaration, so that the completion value stays the code's, and a
   lexical one, which stays in the eval (a var would be a global to add and delete for every job, which
   costs the next job's global lookups ~20 us). */
static const char run_source[] =
    "(function (code) {\n"
    "  return (0, eval)(code +\n"
    "    '\\n;let __beamline_m = __beamline_main(typeof main === \"function\" ? main : void 0);');\n"
    "})";

/* Called with (run, log, info, warn, error, random, main); returns clean. Strict; runs before any job. */
static const char harden_source[] =
    "(function (run, log, info, warn, error, random, main) {\n"
    "  'use strict';\n"
    "  const g = globalThis;\n"
    "  const { freeze, isFrozen, isExtensible, getPrototypeOf, getOwnPropertyDescriptor, defineProperty,\n"
    "          hasOwn } = Object;\n"
    "  const { ownKeys, deleteProperty } = Reflect;\n"
    "  const fail = (what) => { throw new TypeError('cannot harden the realm: ' + what); };\n"
    "  const hidden = { writable: true, enumerable: false, configurable: true };\n"
    "  defineProperty(g, 'console', { ...hidden, value: { log, info, warn, error, debug: log } });\n"
    "  defineProperty(g, '__beamline_main', { ...hidden, value: main });\n"
    "  /* args: a global for good, its value the job's (cleared by clean): deleting a global and adding it\n"
    "     again for every job costs ~10 us of the next job's global code */\n"
    "  defineProperty(g, 'args', { ...hidden, value: undefined });\n"
    "  defineProperty(Math, 'random', { ...hidden, value: random });\n"
    "  for (const name of ['WeakRef', 'FinalizationRegistry'])\n"
    "    if (!deleteProperty(g, name)) fail(name);\n"
    "  for (const k of ownKeys(RegExp)) {\n"
    "    const d = getOwnPropertyDescriptor(RegExp, k);\n"
    "    if (typeof k === 'string' && d.get !== undefined && !deleteProperty(RegExp, k))\n"
    "      fail('RegExp.' + k);\n"
    "  }\n"
    "  const enable = (o, names) => {\n"
    "    for (const k of names) {\n"
    "      const d = getOwnPropertyDescriptor(o, k);\n"
    "      if (d === undefined || !('value' in d)) continue;\n"
    "      const value = d.value;\n"
    "      defineProperty(o, k, { enumerable: d.enumerable, configurable: false,\n"
    "        get: function () { return value; },\n"
    "        set: function (v) {\n"
    "          if (this === o || this === null || (typeof this !== 'object' && typeof this !== 'function'))\n"
    "            return; /* the built-in itself stays as it is */\n"
    "          if (hasOwn(this, k)) this[k] = v;\n"
    "          else\n"
    "            defineProperty(this, k,\n"
    "                           { value: v, writable: true, enumerable: true, configurable: true });\n"
    "        } });\n"
    "    }\n"
    "  };\n"
    "  for (const E of [Error, EvalError, RangeError, ReferenceError, SyntaxError, TypeError, URIError,\n"
    "                   AggregateError])\n"
    "    enable(E.prototype, ['name', 'message', 'constructor', 'toString']);\n"
    "  enable(Object.prototype, ['toString', 'valueOf', 'constructor', 'hasOwnProperty', 'isPrototypeOf',\n"
    "                            'propertyIsEnumerable', 'toLocaleString']);\n"
    "  enable(Function.prototype, ['toString']);\n"
    "  enable(Date.prototype, ['toJSON', 'toString']);\n"
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
    "  add(() => getOwnPropertyDescriptor((function () { 'use strict'; return arguments; })(),\n"
    "                                     'callee').get);\n"
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
    "  /* Object.prototype and Array.prototype are not made non-extensible: JavaScriptCore would put every\n"
    "     array on its slow path (indexed code 2-3 times slower). Their properties are locked like the\n"
    "     others' (but Array.prototype.length, which must stay writable for the same reason), and clean()\n"
    "     deletes what a job added to them. */\n"
    "  const OP = Object.prototype, AP = Array.prototype;\n"
    "  for (const o of seen) if (o !== g && o !== OP && o !== AP) freeze(o);\n"
    "  for (const o of [g, OP, AP])\n"
    "    for (const k of ownKeys(o)) {\n"
    "      if ((o === AP && k === 'length') || (o === g && k === 'args')) continue;\n"
    "      const d = getOwnPropertyDescriptor(o, k);\n"
    "      if ('value' in d) d.writable = false;\n"
    "      d.configurable = false;\n"
    "      defineProperty(o, k, d);\n"
    "    }\n"
    "  for (const o of seen) if (o !== g && o !== OP && o !== AP && !isFrozen(o)) fail(String(o));\n"
    "  const watched = [g, OP, AP].map((o) => ({ o, known: new Set(ownKeys(o)),\n"
    "                                           count: ownKeys(o).length }));\n"
    "  const apProto = getPrototypeOf(AP);\n"
    "  /* An index on a prototype slows the realm's arrays down for good: such a realm is not kept. */\n"
    "  const isIndex = (k) => typeof k === 'string' && String(k >>> 0) === k && k !== '4294967295';\n"
    "  const reset = /(?:)/;\n"
    "  const exec = RegExp.prototype.exec;\n"
    "  const clean = function () {\n"
    "    let ok = true;\n"
    "    for (let w = 0; w < watched.length; w++) {\n"
    "      const o = watched[w].o, keys = ownKeys(o);\n"
    "      if (!isExtensible(o)) ok = false;\n"
    "      if (keys.length !== watched[w].count)\n"
    "        for (let i = 0; i < keys.length; i++)\n"
    "          if (!watched[w].known.has(keys[i]) &&\n"
    "              ((w > 0 && isIndex(keys[i])) || !deleteProperty(o, keys[i])))\n"
    "            ok = false;\n"
    "    }\n"
    "    g.args = undefined;\n"
    "    const length = getOwnPropertyDescriptor(AP, 'length');\n"
    "    if (!length.writable || getPrototypeOf(AP) !== apProto) ok = false;\n"
    "    else if (length.value !== 0) AP.length = 0;\n"
    "    exec.call(reset, ''); /* the realm keeps its last match's input: not the job's any more */\n"
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

bool bw_jsrealm_create(bw_jsrealm_t *r, JSContextGroupRef group, const bw_jsrealm_natives_t *natives,
                       char *err, size_t errlen)
{
    JSValueRef exc = NULL;
    memset(r, 0, sizeof *r);
    r->ctx = JSGlobalContextCreateInGroup(group, NULL);
    JSObjectRef run = eval_function(r->ctx, run_source, &exc);
    JSObjectRef harden = run != NULL ? eval_function(r->ctx, harden_source, &exc) : NULL;
    JSValueRef clean = NULL;
    if (harden != NULL) {
        JSObjectCallAsFunctionCallback fns[] = {natives->log,   natives->info,   natives->warn,
                                                natives->error, natives->random, natives->main};
        JSValueRef argv[7] = {run};
        for (int i = 0; i < 6; i++)
            argv[i + 1] = JSObjectMakeFunctionWithCallback(r->ctx, NULL, fns[i]);
        clean = JSObjectCallAsFunction(r->ctx, harden, NULL, 7, argv, &exc);
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

bool bw_jsrealm_run(const bw_jsrealm_t *r, JSStringRef code, JSValueRef *value, JSValueRef *exc)
{
    JSValueRef arg = JSValueMakeString(r->ctx, code);
    *value = JSObjectCallAsFunction(r->ctx, r->run, NULL, 1, &arg, exc);
    if (*value == NULL) {
        /* eval's SyntaxError carries the line of the eval call: a code that does not parse as a
           script gets the parser's own error, with the line and column in the code */
        JSValueRef syntax = NULL;
        if (!JSCheckScriptSyntax(r->ctx, code, NULL, 1, &syntax) && syntax != NULL)
            *exc = syntax;
        return false;
    }
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
