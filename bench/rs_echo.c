/* See rs_echo.h. */
#include "rs_echo.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

long long rs_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

const char *rs_str(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

json_t *rs_echo_result(json_t *a, long long t0, const char *name)
{
    const char *id = rs_str(a, "assignment_id"), *tenant = rs_str(a, "tenant_id");
    json_t *job = json_object_get(a, "job");
    const char *type = rs_str(job, "type");
    if (id == NULL || tenant == NULL || type == NULL)
        return NULL;
    json_t *payload = json_object_get(job, "payload");
    return json_pack("{sssssssssssssss{ss}sssOsIsfsIsi}", "version", "1", "assignment_id", id, "request_id",
                     rs_str(a, "request_id") ? rs_str(a, "request_id") : id, "tenant_id", tenant, "status",
                     "success", "provider_id", name, "worker_id", name, "job", "type", type, "job_type", type,
                     "output", payload ? payload : json_object(), "latency_ms",
                     (json_int_t)(rs_now_ms() - t0), "cost", 0.0, "timestamp", (json_int_t)rs_now_ms(),
                     "attempts", 1);
}

natsMsg *rs_result_msg(const char *subject, const char *data, const char *tenant, const char *id)
{
    natsMsg *m = NULL;
    char msgid[300];
    snprintf(msgid, sizeof msgid, "result-%s", id);
    if (natsMsg_Create(&m, subject, NULL, data, (int)strlen(data)) != NATS_OK)
        return NULL;
    natsMsgHeader_Set(m, "tenant_id", tenant);
    natsMsgHeader_Set(m, "version", "1");
    natsMsgHeader_Set(m, "Nats-Msg-Id", msgid);
    return m;
}
