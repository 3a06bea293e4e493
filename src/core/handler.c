/* The job-type table. Adding a job type is one file in src/handlers and one line here. */
#include "core/handler.h"

#include <string.h>

static const bw_handler_t *const table[] = {
    &bw_handler_echo,         &bw_handler_fs_blob_delete, &bw_handler_fs_blob_get,
    &bw_handler_fs_blob_list, &bw_handler_fs_blob_put,    &bw_handler_fs_blob_stat,
    &bw_handler_graphql,      &bw_handler_http,           &bw_handler_human_approval,
    &bw_handler_javascript,   &bw_handler_jmespath,       &bw_handler_sleep,
    &bw_handler_sql,
};

#define NHANDLERS (sizeof table / sizeof table[0])

int bw_handler_index(const char *type)
{
    for (size_t i = 0; type != NULL && i < NHANDLERS; i++)
        if (strcmp(table[i]->name, type) == 0)
            return (int)i;
    return -1;
}

const bw_handler_t *bw_handler_at(int i)
{
    return i >= 0 && (size_t)i < NHANDLERS ? table[i] : NULL;
}

int bw_handler_count(void)
{
    return (int)NHANDLERS;
}

const bw_handler_t *bw_handler_find(const char *type)
{
    int i = bw_handler_index(type);
    return i >= 0 ? table[i] : NULL;
}

void bw_handlers_shutdown(void)
{
    for (size_t i = 0; i < NHANDLERS; i++)
        if (table[i]->shutdown != NULL)
            table[i]->shutdown();
}

const char *const *bw_handler_names(void)
{
    static const char *names[NHANDLERS + 1];
    for (size_t i = 0; i < NHANDLERS; i++)
        names[i] = table[i]->name;
    names[NHANDLERS] = NULL;
    return names;
}
