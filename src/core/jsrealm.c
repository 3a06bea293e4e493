/*
 * Hardened realm. A fresh JavaScriptCore global context costs ~200 µs of CPU (creating and later
 * collecting ~700 built-in objects), 10-20 times a small script's own cost, so a sandbox keeps one
 * realm for many jobs and makes it impossible for a job to leave anything behind for the next:
 *
 *  - Every built-in is frozen: all objects reachable from the global object through properties,
 *    accessors and prototypes, plus the intrinsics reachable only through instances (iterator,
 *    generator and async prototypes, %TypedArray%, iterator helpers, Intl segments). The global
 *    object's own properties become non-writable and non-configurable; it stays extensible.
 *  - But Object.prototype and Array.prototype: frozen, they put JavaScriptCore's arrays on a slow path
 *    (indexed code 2-3 times slower). clean() compares them with a snapshot instead (keys, descriptors,
 *    prototype, extensibility) and puts back what a job changed; when that is not possible (an
 *    indexed property, which also slows the realm's arrays for good; preventExtensions) the realm is
 *    thrown away.
 *  - A job's code runs as an indirect eval, global code of its own: its let, const and class
 *    declarations live in it; its var and function declarations, and whatever else it adds to the
 *    global object (implicit globals, globalThis.x = ..., `args` and its keys), are deleted by clean(),
 *    which compares the global's own keys with those recorded at creation. A global that cannot be
 *    deleted, or a global object made non-extensible, makes clean() false and the realm is thrown
 *    away. (A direct eval in a function would keep declarations off the global object, but one job's
 *    `var` would then slow every later job's global lookups: JavaScriptCore's var-injection watchpoint
 *    is the realm's.) The code is followed by a var statement that hands its `main` to the engine.
 *  - Removed or replaced because they would carry a job's objects or data into later jobs: WeakRef and
 *    FinalizationRegistry (cleanup callbacks run whenever the collector decides), RegExp's legacy
 *    static match properties (RegExp.$1, lastMatch, input, ...: the realm's last match, whose input
 *    clean() also overwrites so that the realm does not keep it alive) and Math.random (the realm's
 *    generator is predictable from its outputs: the engine's gives each job its own, seeded from the
 *    kernel).
 *  - Assigning a property that a frozen prototype has (`err.name = ...`, `fn.toString = ...`) would
 *    fail (the "override mistake"); for the usual ones (the Error prototypes' name, message,
 *    constructor and toString, Function.prototype's toString, Date.prototype's toJSON and toString)
 *    the property is an accessor whose setter defines the property on the object assigned to, as SES
 *    does.
 *  - The engine's natives (console, Math.random, __beamline_main) are installed before freezing; the
 *    run and clean functions are frozen too.
 *
 * What a job still shares with later ones: nothing it can write and a later job read. A job can attach
 * private fields to frozen objects (the spec allows it; no other job can read them): memory only,
 * which the sandbox bounds by replacing a realm when its process grows (core/cli_sandbox.c).
 */
#include "core/jsrealm.h"

#include <stdio.h>
#include <string.h>

/* What jobs run in: their code as an indirect eval (global code of its own), followed by a statement
   that hands `main` to the engine; a var statement, so the completion value stays the code's. */
static const char run_source[] =
    "(function (code) {\n"
    "  return (0, eval)(code + '\\n;var __beamline_m = __beamline_main(typeof main === \"function\" ? main : void 0);');\n"
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
    "  defineProperty(Math, 'random', { ...hidden, value: random });\n"
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
    "          if (this === o || this === null || (typeof this !== 'object' && typeof this !== 'function'))\n"
    "            return; /* the built-in itself stays as it is */\n"
    "          if (hasOwn(this, k)) this[k] = v;\n"
    "          else defineProperty(this, k, { value: v, writable: true, enumerable: true, configurable: true });\n"
    "        } });\n"
    "    }\n"
    "  };\n"
    "  for (const E of [Error, EvalError, RangeError, ReferenceError, SyntaxError, TypeError, URIError,\n"
    "                   AggregateError])\n"
    "    enable(E.prototype, ['name', 'message', 'constructor', 'toString']);\n"
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
    "  /* Freezing Object.prototype or Array.prototype puts JavaScriptCore's arrays on a slow path (indexed\n"
    "     code 2-3 times slower): those two stay as they are and clean() checks them instead. */\n"
    "  const watched = [Object.prototype, Array.prototype];\n"
    "  for (const o of seen) if (o !== g && o !== watched[0] && o !== watched[1]) freeze(o);\n"
    "  for (const k of ownKeys(g)) {\n"
    "    const d = getOwnPropertyDescriptor(g, k);\n"
    "    if ('value' in d) d.writable = false;\n"
    "    d.configurable = false;\n"
    "    defineProperty(g, k, d);\n"
    "  }\n"
    "  for (const o of seen) if (o !== g && o !== watched[0] && o !== watched[1] && !isFrozen(o)) fail(String(o));\n"
    "  const base = new Set(ownKeys(g));\n"
    "  const count = base.size;\n"
    "  const snapshot = watched.map((o) => {\n"
    "    const keys = ownKeys(o);\n"
    "    const descs = keys.map((k) => Object.setPrototypeOf(getOwnPropertyDescriptor(o, k), null));\n"
    "    return { o, proto: getPrototypeOf(o), keys, known: new Set(keys), descs };\n"
    "  });\n"
    "  /* Whether a watched object is as it was. The keys are compared first: a descriptor's missing fields\n"
    "     are looked up on Object.prototype, where a job could have added an accessor. */\n"
    "  const same = (w) => {\n"
    "    const o = w.o, keys = ownKeys(o);\n"
    "    if (!isExtensible(o) || getPrototypeOf(o) !== w.proto || keys.length !== w.keys.length) return false;\n"
    "    for (let i = 0; i < keys.length; i++) if (keys[i] !== w.keys[i]) return false;\n"
    "    for (let i = 0; i < keys.length; i++) {\n"
    "      const d = getOwnPropertyDescriptor(o, keys[i]), b = w.descs[i];\n"
    "      if (d.value !== b.value || d.get !== b.get || d.set !== b.set || d.writable !== b.writable ||\n"
    "          d.enumerable !== b.enumerable || d.configurable !== b.configurable) return false;\n"
    "    }\n"
    "    return true;\n"
    "  };\n"
    "  /* Puts back what a job changed in the watched objects: its own additions deleted (Object.prototype\n"
    "     first, so that no accessor of the job is left where descriptors are read), the original\n"
    "     properties and prototype defined again. Not possible, or not wise, after an indexed property\n"
    "     (JavaScriptCore then slows every array of the realm down for good) or preventExtensions. */\n"
    "  const isIndex = (k) => typeof k === 'string' && String(k >>> 0) === k && k !== '4294967295';\n"
    "  const restore = () => {\n"
    "    for (const w of snapshot) {\n"
    "      if (!isExtensible(w.o)) return false;\n"
    "      const keys = ownKeys(w.o);\n"
    "      for (let i = 0; i < keys.length; i++)\n"
    "        if (!w.known.has(keys[i]) && (isIndex(keys[i]) || !deleteProperty(w.o, keys[i]))) return false;\n"
    "    }\n"
    "    for (const w of snapshot) {\n"
    "      if (!Reflect.setPrototypeOf(w.o, w.proto)) return false;\n"
    "      for (let i = 0; i < w.keys.length; i++)\n"
    "        if (!Reflect.defineProperty(w.o, w.keys[i], w.descs[i])) return false;\n"
    "    }\n"
    "    return same(snapshot[0]) && same(snapshot[1]);\n"
    "  };\n"
    "  const reset = /(?:)/;\n"
    "  const exec = RegExp.prototype.exec;\n"
    "  const clean = function () {\n"
    "    let ok = isExtensible(g);\n"
    "    const keys = ownKeys(g);\n"
    "    if (keys.length !== count)\n"
    "      for (let i = 0; i < keys.length; i++)\n"
    "        if (!base.has(keys[i]) && !deleteProperty(g, keys[i])) ok = false;\n"
    "    exec.call(reset, ''); /* the realm keeps its last match's input: not the job's any more */\n"
    "    return ok && ((same(snapshot[0]) && same(snapshot[1])) || restore());\n"
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
