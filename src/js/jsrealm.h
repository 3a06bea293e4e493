/*
 * A hardened JavaScriptCore realm that many jobs run in, one after the other, without any of them
 * seeing what an earlier one did (the reasoning is at the top of jsrealm.c).
 *
 * Creation (~10 ms) freezes every built-in reachable from the global object and from a list of
 * intrinsics reachable only through instances; a job then runs its code through bw_jsrealm_run and
 * the realm is cleaned with bw_jsrealm_clean, which says whether it is still fit for another job.
 */
#ifndef BW_JS_JSREALM_H
#define BW_JS_JSREALM_H

#include <JavaScriptCore/JavaScript.h>
#include <stdbool.h>

typedef struct bw_jsrealm {
    JSGlobalContextRef ctx;
    JSObjectRef run;   /* function (code): the completion value of code; protected */
    JSObjectRef clean; /* function (): whether the realm is clean again; protected */
} bw_jsrealm_t;

/* The engine's native functions in the realm: console.log/info/warn/error (debug is log), Math.random,
   and the function that the code run by bw_jsrealm_run calls, last, with its `main` (or undefined). */
typedef struct bw_jsrealm_natives {
    JSObjectCallAsFunctionCallback log, info, warn, error, random, main;
} bw_jsrealm_natives_t;

/* Creates a hardened realm in group. Returns false, with a message in err (size errlen), when the
   hardening failed: a built-in that cannot be frozen or removed. */
bool bw_jsrealm_create(bw_jsrealm_t *r, JSContextGroupRef group, const bw_jsrealm_natives_t *natives,
                       char *err, size_t errlen);

/* Evaluates code as global code of its own (an indirect eval: sloppy unless the code says "use
   strict"; its let, const and class declarations stay in it, its var and function declarations
   become globals that bw_jsrealm_clean removes) and returns its completion value in *value. The
   natives' `main` is called at the end with the code's `main`. Returns false with *exc set when the
   code threw. */
bool bw_jsrealm_run(const bw_jsrealm_t *r, JSStringRef code, JSValueRef *value, JSValueRef *exc);

/* Removes the globals a job added. False when the realm may still hold something of the job (a global
   that cannot be deleted, a global object made non-extensible, a change to Object.prototype or
   Array.prototype): it must then be released. */
bool bw_jsrealm_clean(const bw_jsrealm_t *r);

/* Releases the realm; a zeroed one is a no-op. */
void bw_jsrealm_release(bw_jsrealm_t *r);

#endif
