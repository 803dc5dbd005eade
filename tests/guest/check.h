/* check.h: the reporting every guest test program shares. One line per check, "ok NAME" or
 * "FAIL NAME: ...", flushed at once (a crash must not swallow earlier lines); `failures`
 * counts the FAIL lines, and main returns non-zero when there were any. */
#ifndef KBOX_GUEST_CHECK_H
#define KBOX_GUEST_CHECK_H

#include <stdio.h>
#include <string.h>

static int failures;

/* Passes when `cond` holds; otherwise prints `fmt` with `a` and `b`. */
static inline void check(int cond, const char *name, const char *fmt, long a, long b)
{
    if (cond) {
        printf("ok %s\n", name);
    } else {
        printf("FAIL %s: ", name);
        printf(fmt, a, b);
        printf("\n");
        failures++;
    }
    fflush(stdout);
}

/* Expects ret == -1 with errno == want. */
static inline void check_err(long ret, int err, int want, const char *name)
{
    if (ret == -1 && err == want) {
        printf("ok %s\n", name);
    } else {
        printf("FAIL %s: ret=%ld errno=%d (%s), want -1 errno=%d (%s)\n", name, ret,
               ret == -1 ? err : 0, ret == -1 ? strerror(err) : "-", want, strerror(want));
        failures++;
    }
    fflush(stdout);
}

#endif
