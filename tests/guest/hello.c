/* hello: the smallest guest program. Prints its arguments, one per line, and exits with the
 * status named by its first argument when that is a number 0..255 (so `hello 3` exits 3 and
 * shows the exit status reaches the host), otherwise 0.
 * Guest test convention: run as `hello WORKDIR`, exit 0 means pass. */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    printf("hello from kbox guest: argc=%d\n", argc);
    for (int i = 0; i < argc; i++)
        printf("argv[%d]=%s\n", i, argv[i]);
    if (argc > 1) {
        char *end;
        long v = strtol(argv[1], &end, 10);
        if (*argv[1] != '\0' && *end == '\0' && v >= 0 && v <= 255)
            return (int)v;
    }
    return 0;
}
