/*
 * A hardened JavaScriptCore realm that many jobs run in, one after the other, without any of them
 * seeing what an earlier one did (the reasoning is at the top of jsrealm.c).
 *
 * Creation (~10 ms) freezes every built-in reachable from the global object and from a list of
 * intrinsics reachable only through instances; a job then runs its code through bw_jsrealm_run and
 * the realm is cleaned with bw_jsrealm_clean, which says whether it is still fit for another job.
 */
#ifndef BW_CORE_JSREALM_H
#define BW_CORE_JSREALM_H

#include <JavaScriptCore/JavaScript.h>
#include <stdbool.h>

typedef struct bw_jsrealm {
    JSGlobalContextRef ctx;
    JSObjectRef run;   /* function (code): [completion value, main or undefined]; protected */
    JSObjectRef clean; /* function (): whether the realm is clean again; protected */
} bw_jsrealm_t;

/* The console's methods: native functions installed as console.log/info/warn/error (debug is log). */
typedef struct bw_jsrealm_console {
    JSObjectCallAsFunctionCallback log, info, warn, error;
} bw_jsrealm_console_t;

/* Creates a hardened realm in group. Returns false, with a message in err (size errlen), when the
   hardening failed: a built-in that cannot be frozen or removed. */
bool bw_jsrealm_create(bw_jsrealm_t *r, JSContextGroupRef group, const bw_jsrealm_console_t *console,
                       char *err, size_t errlen);

/* Evaluates code (sloppy mode, as a direct eval in a function of its own: declarations stay in the
   job) and returns its completion value in *value and the function `main` it defined, if any, in
   *main (else undefined). Returns false with *exc set when the code threw. */
bool bw_jsrealm_run(const bw_jsrealm_t *r, JSStringRef code, JSValueRef *value, JSValueRef *main,
                    JSValueRef *exc);

/* Removes the globals a job added. False when the realm may still hold something of the job (a global
   that cannot be deleted, a global object made non-extensible): it must then be released. */
bool bw_jsrealm_clean(const bw_jsrealm_t *r);

/* Releases the realm; a zeroed one is a no-op. */
void bw_jsrealm_release(bw_jsrealm_t *r);

#endif
