/*
 * A strict checker of the Prometheus text exposition format 0.0.4, for tests: metric and label name
 * syntax, label value escapes, numeric values, a TYPE line before each family's samples, no duplicate
 * or interleaved series, and histograms whose buckets are cumulative, end in le="+Inf" and equal _count.
 */
#ifndef BW_TEST_PROM_CHECK_H
#define BW_TEST_PROM_CHECK_H

#include <stddef.h>

/* 0 when text is a valid exposition; else -1 with the reason (line number and text) in why. */
int bw_prom_check(const char *text, char *why, size_t whylen);
/* The value of the sample whose "name{labels}" is exactly series, or NAN when absent. */
double bw_prom_value(const char *text, const char *series);

#endif
