/* A static AArch64 program (no libc: aarch64-linux-gnu-gcc cannot link musl) with the site
 * shapes the rewriter cares about: plain wrappers, a bare svc, and the cancellable-call
 * chain (caller loads the number into x6, bl, C-level step, arg-shuffling svc). */
    .text
    .globl _start
_start:
    mov x0, #1
    adr x1, msg
    mov x2, #3
    movz x6, #64                /* write, through the cancel chain */
    bl cancel_entry
    mov x0, #1
    mov x1, #2
    mov x2, #3
    mov x3, #4
    mov x4, #5
    mov x5, #6
    movz x6, #7                 /* 7th argument of an ordinary C call, not a number */
    bl seven_args
    bl bare_getpid
    mov x6, #0                  /* musl 1.2's __syscall_cp(nr, a..f): x6 is its last argument */
    mov x0, #172                /* getpid, the number in x0 */
    bl syscall_cp
    mov x0, #0
    mov x8, #93                 /* exit */
    svc #0

/* What a C function with seven arguments compiles to: no svc anywhere below. */
seven_args:
    add x0, x0, x6
    add x0, x0, x1
    ret

/* The C-level step: checks state, then tail-calls the arch part. */
cancel_entry:
    stp x29, x30, [sp, #-16]!
    mov x29, sp
    bl cancel_arch
    ldp x29, x30, [sp], #16
    ret

/* The arch part: shuffle (a,b,c,d,e,f,nr) into the kernel's registers, then svc. */
cancel_arch:
    mov x8, x6
    mov x7, x0
    mov x0, x7
    mov x1, x1
    mov x2, x2
    svc #0
    ret

/* musl 1.2's shape: a tail call, then (nr, a..f) shuffled into x8 and x0-x5. */
syscall_cp:
    b syscall_cp_c
syscall_cp_c:
    mov x8, x0
    mov x0, x1
    mov x1, x2
    mov x2, x3
    mov x3, x4
    mov x4, x5
    mov x5, x6
    svc #0
    ret

/* The number comes from memory: a bare site. */
bare_getpid:
    ldr x8, nr_getpid
    svc #0
    ret

    .p2align 3
nr_getpid:
    .quad 172
msg:
    .ascii "ok\n"
