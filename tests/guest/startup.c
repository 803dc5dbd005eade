/* startup: what a program finds when it starts, whoever loaded it (the host kernel natively,
 * kbox's own loader in the in-process tiers): argv and environ where the ABI puts them, the
 * auxiliary vector's entries that libc relies on (AT_PHDR for thread-local storage and
 * dl_iterate_phdr, AT_RANDOM for the stack protector, AT_ENTRY, AT_PAGESZ, the vDSO), and
 * initialised and zeroed thread-local variables. Prints argv and STARTUP_NOTE so a loader
 * test can compare its output with the native run's.
 * Guest test convention: exit 0 means pass. */
#define _GNU_SOURCE
#include "check.h"
#include <elf.h>
#include <link.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/auxv.h>
#include <unistd.h>

extern char **environ;
extern char _start[];
static __thread int tls_value = 42;
static __thread long tls_zero;

static int main_found;

static int find_main(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    (void)data;
    uintptr_t m = (uintptr_t)&main_found, code = (uintptr_t)_start;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t lo = info->dlpi_addr + ph->p_vaddr, hi = lo + ph->p_memsz;
        if (ph->p_type == PT_LOAD && (ph->p_flags & PF_X) && code >= lo && code < hi)
            main_found |= 1;
        if (ph->p_type == PT_LOAD && (ph->p_flags & PF_W) && m >= lo && m < hi)
            main_found |= 2;
    }
    return 0;
}

int main(int argc, char **argv)
{
    for (int i = 0; i < argc; i++)
        printf("argv[%d]=%s\n", i, argv[i]);
    const char *note = getenv("STARTUP_NOTE");
    printf("note=%s\n", note ? note : "(none)");
    check(argc >= 1 && argv[argc] == NULL, "argv ends in NULL", "argc=%ld %ld", argc, 0);
    check(environ == argv + argc + 1, "environ follows argv", "%lx %lx", (long)environ,
          (long)(argv + argc + 1));
    check(getauxval(AT_PAGESZ) == (unsigned long)sysconf(_SC_PAGESIZE), "AT_PAGESZ",
          "%ld vs %ld", (long)getauxval(AT_PAGESZ), sysconf(_SC_PAGESIZE));
    check(getauxval(AT_ENTRY) == (unsigned long)_start, "AT_ENTRY is _start", "%lx vs %lx",
          (long)getauxval(AT_ENTRY), (long)_start);
    const unsigned char *rnd = (const unsigned char *)getauxval(AT_RANDOM);
    int nonzero = 0;
    for (int i = 0; rnd && i < 16; i++)
        nonzero |= rnd[i];
    check(rnd && nonzero, "AT_RANDOM has 16 bytes", "%lx %ld", (long)rnd, nonzero);
    const char *execfn = (const char *)getauxval(AT_EXECFN);
    check(execfn && *execfn, "AT_EXECFN names the program", "%lx %ld", (long)execfn, 0);
    const char *vdso = (const char *)getauxval(AT_SYSINFO_EHDR);
    check(!vdso || memcmp(vdso, ELFMAG, SELFMAG) == 0, "AT_SYSINFO_EHDR is an ELF image",
          "%lx %ld", (long)vdso, 0);
    dl_iterate_phdr(find_main, NULL);
    check(main_found == 3, "AT_PHDR: the program's code and data segments", "%ld %ld",
          main_found, 0);
    check(tls_value == 42 && tls_zero == 0, "thread-local storage initialised", "%ld %ld",
          tls_value, tls_zero);
    tls_value++;
    check(tls_value == 43, "thread-local storage writable", "%ld %ld", tls_value, 0);
    return failures != 0;
}
