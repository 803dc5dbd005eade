/* Encodings that compilers emit rarely but the decoder must size right. */
    .text
    .globl edge
edge:
    movabs 0x1122334455667788, %al
    movabs %rax, 0x1122334455667788
    addr32 mov 0x11223344, %eax
    movabs $0x1122334455667788, %r11
    mov $0x1234, %ax
    push $0x1234
    pushw $0x12
    add $0x1234, %ax
    testw $0x1234, (%rax)
    testb $1, 7(%rsp)
    test $0x12345678, %ecx
    enter $16, $1
    ret $8
    lretq $8
    int $0x80
    xabort $1
1:  xbegin 1b
    jrcxz 1b
    loop 1b
    lock cmpxchg16b (%rdi)
    rep stosq
    fs mov (%rax), %rax
    mov %fs:0x28, %rax
    mov %cr0, %rax
    mov %rax, %dr7
    pshufw $3, %mm1, %mm2
    pfadd %mm1, %mm2
    extrq $4, $8, %xmm1
    insertq $4, $8, %xmm2, %xmm1
    psrlw $3, %xmm1
    shld $5, %eax, (%rbx, %rcx, 8)
    crc32b (%rsi), %eax
    movbe 0x10(%rip), %eax
    pclmulqdq $0x11, 0x12345678(%rip), %xmm3
    vzeroupper
    vpshufd $0x1b, (%rax), %ymm1
    vpermq $0x4e, %ymm2, %ymm3
    vfmadd231ps 0x40(%rax,%rbx,4), %ymm1, %ymm2
    vpblendvb %ymm1, %ymm2, %ymm3, %ymm4
    vaddps 0x40(%rax), %zmm1, %zmm2{%k1}{z}
    vpternlogd $0xff, %zmm0, %zmm0, %zmm0
    vcmpps $1, %zmm1, %zmm2, %k3
    vaddph %zmm1, %zmm2, %zmm3
    vpcmpub $2, 0x100(%rip), %zmm4, %k1
    vprotd $5, %xmm1, %xmm2
    vpcmov %xmm1, %xmm2, %xmm3, %xmm4
    bextr $0x1234, %eax, %ebx
    endbr64
    nopw %cs:0x0(%rax,%rax,1)
    .byte 0x66, 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0
    fldt 0x10(%rbp)
    fxch %st(3)
    ud2
    ud1 %eax, %eax
    rdtscp
    syscall
    call *0x10(%rip)
    jmp *(%rax)
    mov $0x050f, %eax
    movabs $0x050f050f050f050f, %rax
    lea 0x50f(%rip), %rax
    syscall
