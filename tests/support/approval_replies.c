/* Checks of decision replies (see approval_replies.h). */
#include "approval_replies.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

void bw_test_expect_accepted(json_t *reply, bool completed)
{
    if (!json_is_true(json_object_get(reply, "accepted")) ||
        json_is_true(json_object_get(reply, "completed")) != completed) {
        char *s = json_dumps(reply, JSON_COMPACT);
        fail_msg("expected accepted%s, got %s", completed ? " and completed" : " (not completed)", s);
    }
    json_decref(reply);
}

void bw_test_expect_refused(json_t *reply, const char *reason)
{
    const char *got = json_string_value(json_object_get(reply, "reason"));
    if (!json_is_false(json_object_get(reply, "accepted")) || got == NULL || strcmp(got, reason) != 0 ||
        !json_is_string(json_object_get(reply, "message"))) {
        char *s = json_dumps(reply, JSON_COMPACT);
        fail_msg("expected refused %s with a message, got %s", reason, s);
    }
    json_decref(reply);
}
