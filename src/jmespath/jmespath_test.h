/*
 * Helpers the tests need from the JMESPath library; not part of its API for the worker.
 */
#ifndef BW_JMESPATH_TEST_H
#define BW_JMESPATH_TEST_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "jmespath.h"

/* JMESPath equality as the evaluator uses it: deep, numbers by value (1 == 1.0), objects
   unordered. False also when the values nest deeper than BW_JMESPATH_MAX_DATA_DEPTH. */
bool bw_jmespath_test_equal(const json_t *a, const json_t *b);

/* bw_jmespath_eval_opts (without error details) that also sets *steps to the budget steps the
   evaluation used, successful or not. */
int bw_jmespath_test_eval_steps(const bw_jmespath_expr_t *e, json_t *data, const bw_jmespath_eval_opts_t *o,
                                json_t **result, uint64_t *steps);

#endif
