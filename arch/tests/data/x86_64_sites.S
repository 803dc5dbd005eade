/* Syscall sites of each shape, one function per 64 bytes (function k at offset 64*k).
 * Position-independent, so the test can run them from any buffer. */
    .text
    .p2align 6
f0_wrapper:                     /* long f0(void): getpid */
    mov $39, %eax
    syscall
    ret

    .p2align 6
f1_bare:                        /* long f1(long nr, long a, long b) */
    mov %rdi, %rax
    mov %rsi, %rdi
    mov %rdx, %rsi
    syscall
    ret

    .p2align 6
f2_inside:                      /* long f2(long x): getpid() + x, in a longer body */
    push %rbx
    mov %rdi, %rbx
    xor %ecx, %ecx
    mov $39, %eax
    syscall
    add %rbx, %rax
    pop %rbx
    ret

    .p2align 6
f3_riprel:                      /* long f3(void): number loaded RIP-relative */
    mov nr_getpid(%rip), %eax
    syscall
    ret

    .p2align 6
f4_refused:                     /* long f4(long nr): the site is a jump target */
    mov %rdi, %rax
    jmp 1f
1:  syscall
    ret

    .p2align 6
f5_preserve:                    /* long f5(long a): caller-saved registers survive */
    mov %rdi, %r8
    lea 1(%rdi), %r9
    lea 2(%rdi), %r10
    lea 3(%rdi), %rdx
    lea 4(%rdi), %rsi
    movq %rdi, %xmm1
    mov $39, %eax
    syscall
    movq %xmm1, %rax
    add %r8, %rax
    add %r9, %rax
    add %r10, %rax
    add %rdx, %rax
    add %rsi, %rax
    ret

    .p2align 6
f6_flags:                       /* long f6(long a, long b): flags survive the site */
    mov $39, %eax
    cmp %rsi, %rdi
    syscall
    setl %al
    movzbl %al, %eax
    ret

    .p2align 6
nr_getpid:
    .quad 39
