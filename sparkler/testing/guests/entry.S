/*
 * Sparkler probe guest: entry points and the few things that must be assembly.
 *
 *   _start64     Linux 64-bit boot protocol entry (ELF e_entry): long mode, RSI = boot_params.
 *   _pvh_start   PVH entry (XEN_ELFNOTE_PHYS32_ENTRY, see pvh_note.S): 32-bit protected mode,
 *                paging off, EBX = hvm_start_info.  Switches to long mode and joins common64.
 *   isr_stubs    256 interrupt stubs, 16 bytes apart, all funnelling into exc_handler() (probe.c).
 *   run_user     runs fn(arg) at CPL3 (iretq); the function returns into `ud2` at user_exit, the
 *                #UD handler calls user_return() which resumes run_user's caller at CPL0.
 *   tramp_*      16-bit AP start-up trampoline, copied to TRAMP_BASE by the BSP (SIPI vector
 *                TRAMP_BASE >> 12); real -> protected -> long mode, then ap_entry64.
 *
 * Everything here runs at CPL0, which this host emulates instruction by instruction, so the paths
 * are kept short.  No int3 / int n anywhere.
 */

#define KCODE   0x08
#define KDATA   0x10
#define UDATA   0x18
#define UCODE   0x20
#define TRAMP_BASE 0x10000
#define MAX_APS 31
#define AP_STACK_SIZE 4096

        .section .text.entry, "ax"
        .code64
        .globl _start64
_start64:
        cli
        xor     %edi, %edi              /* boot kind 0 = Linux boot protocol; RSI = boot_params */
        jmp     common64

        .code32
        .globl _pvh_start
_pvh_start:
        cli
        mov     %ebx, %esi              /* hvm_start_info */
        lgdt    gdt_ptr
        mov     $KDATA, %eax
        mov     %eax, %ds
        mov     %eax, %es
        mov     %eax, %ss
        mov     %cr4, %eax
        or      $0x20, %eax             /* PAE */
        mov     %eax, %cr4
        mov     $pvh_pml4, %eax
        mov     %eax, %cr3
        mov     $0xc0000080, %ecx       /* EFER.LME */
        rdmsr
        or      $0x100, %eax
        wrmsr
        mov     %cr0, %eax
        or      $0x80000001, %eax       /* PG | PE */
        mov     %eax, %cr0
        ljmp    $KCODE, $pvh64
        .code64
pvh64:
        mov     $1, %edi                /* boot kind 1 = PVH */
        jmp     common64

common64:
        mov     $bsp_stack_top, %rsp
        mov     %rdi, %r12
        mov     %rsi, %r13
        /* zero .bss (small: the stacks and page tables live in .noinit and need no clearing) */
        mov     $__bss_start, %rdi
        mov     $__bss_end, %rcx
        sub     %rdi, %rcx
        shr     $3, %rcx
        xor     %eax, %eax
        rep stosq
        lgdt    gdt_ptr(%rip)
        pushq   $KCODE
        lea     1f(%rip), %rax
        push    %rax
        lretq
1:      mov     $KDATA, %eax
        mov     %eax, %ds
        mov     %eax, %es
        mov     %eax, %ss
        xor     %eax, %eax
        mov     %eax, %fs
        mov     %eax, %gs
        mov     %r12, %rdi
        mov     %r13, %rsi
        call    probe_main
2:      ud2
        jmp     2b

/* ---- interrupt stubs: vector N at isr_stubs + 16*N ------------------------------------------ */
        .balign 16
        .globl isr_stubs
isr_stubs:
        .set    vec, 0
        .rept   256
        .balign 16
        .if     (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
        .else
        pushq   $0
        .endif
        pushq   $vec
        jmp     isr_common
        .set    vec, vec + 1
        .endr

isr_common:
        push    %rax
        push    %rcx
        push    %rdx
        push    %rbx
        push    %rbp
        push    %rsi
        push    %rdi
        push    %r8
        push    %r9
        push    %r10
        push    %r11
        push    %r12
        push    %r13
        push    %r14
        push    %r15
        cld
        mov     %rsp, %rdi
        call    exc_handler
        pop     %r15
        pop     %r14
        pop     %r13
        pop     %r12
        pop     %r11
        pop     %r10
        pop     %r9
        pop     %r8
        pop     %rdi
        pop     %rsi
        pop     %rbp
        pop     %rbx
        pop     %rdx
        pop     %rcx
        pop     %rax
        add     $16, %rsp
        iretq

/* ---- ring 3 --------------------------------------------------------------------------------- */
/* u64 run_user(u64 (*fn)(u64), u64 arg, u64 user_stack_top) */
        .globl run_user
run_user:
        push    %rbx
        push    %rbp
        push    %r12
        push    %r13
        push    %r14
        push    %r15
        mov     %rsp, kctx_rsp(%rip)
        lea     -8(%rdx), %rax
        movq    $user_exit, (%rax)      /* fn returns into the ud2 below */
        pushq   $(UDATA | 3)
        push    %rax
        pushq   $0x202
        pushq   $(UCODE | 3)
        push    %rdi
        mov     %rsi, %rdi
        iretq

        .globl user_exit
user_exit:
        ud2

/* void user_return(u64 result): called by the #UD handler, resumes run_user's caller */
        .globl user_return
user_return:
        mov     $KDATA, %eax
        mov     %eax, %ds
        mov     %eax, %es
        mov     %eax, %ss
        mov     kctx_rsp(%rip), %rsp
        mov     %rdi, %rax
        pop     %r15
        pop     %r14
        pop     %r13
        pop     %r12
        pop     %rbp
        pop     %rbx
        ret

/* ---- application processors ----------------------------------------------------------------- */
        .globl ap_entry64
ap_entry64:
        mov     $1, %eax
        lock xadd %eax, ap_slot(%rip)
        cmp     $MAX_APS, %eax
        jae     3f
        mov     %eax, %edi
        lea     1(%rax), %rax
        shl     $12, %rax
        lea     ap_stacks(%rip), %rsp
        add     %rax, %rsp
        lgdt    gdt_ptr(%rip)
        pushq   $KCODE
        lea     1f(%rip), %rax
        push    %rax
        lretq
1:      mov     $KDATA, %eax
        mov     %eax, %ds
        mov     %eax, %es
        mov     %eax, %ss
        lidt    idt_ptr(%rip)
        call    ap_main
3:      cli
        hlt
        jmp     3b

/* 16-bit trampoline, position-dependent on TRAMP_BASE; copied there by the BSP. */
        .balign 16
        .globl tramp_start, tramp_end, tramp_cr3
        .code16
tramp_start:
        cli
        mov     %cs, %ax
        mov     %ax, %ds
        lgdtl   %ds:(tramp_gdtr - tramp_start)
        mov     %cr0, %eax
        or      $1, %eax
        mov     %eax, %cr0
        ljmpl   $0x08, $(TRAMP_BASE + tramp_pm - tramp_start)
        .code32
tramp_pm:
        mov     $0x10, %eax
        mov     %eax, %ds
        mov     %eax, %es
        mov     %eax, %ss
        mov     %cr4, %eax
        or      $0x20, %eax
        mov     %eax, %cr4
        mov     (TRAMP_BASE + tramp_cr3 - tramp_start), %eax
        mov     %eax, %cr3
        mov     $0xc0000080, %ecx
        rdmsr
        or      $0x100, %eax
        wrmsr
        mov     %cr0, %eax
        or      $0x80000000, %eax
        mov     %eax, %cr0
        ljmp    $0x18, $(TRAMP_BASE + tramp_lm - tramp_start)
        .code64
tramp_lm:
        movabs  $ap_entry64, %rax
        jmp     *%rax
        .balign 8
tramp_gdt:
        .quad   0
        .quad   0x00cf9a000000ffff      /* 0x08 32-bit code */
        .quad   0x00cf92000000ffff      /* 0x10 data */
        .quad   0x00af9a000000ffff      /* 0x18 64-bit code */
tramp_gdtr:
        .word   4 * 8 - 1
        .long   TRAMP_BASE + tramp_gdt - tramp_start
        .balign 4
tramp_cr3:
        .long   0
tramp_end:

/* ---- data ----------------------------------------------------------------------------------- */
        .section .data
        .balign 16
        .globl gdt, gdt_ptr
gdt:
        .quad   0
        .quad   0x00af9a000000ffff      /* 0x08 kernel code, 64-bit */
        .quad   0x00cf92000000ffff      /* 0x10 kernel data */
        .quad   0x00cff2000000ffff      /* 0x18 user data (DPL3) */
        .quad   0x00affa000000ffff      /* 0x20 user code, 64-bit (DPL3) */
        .quad   0, 0                    /* 0x28 TSS, filled in by probe.c */
gdt_end:
        .balign 8
        .word   0, 0, 0
gdt_ptr:
        .word   gdt_end - gdt - 1
        .quad   gdt

        /* Boot page tables for the PVH path only: identity map of the first 1 GiB, 2 MiB pages. */
        .balign 4096
pvh_pml4:
        .quad   pvh_pdpt + 3
        .fill   511, 8, 0
pvh_pdpt:
        .quad   pvh_pd + 3
        .fill   511, 8, 0
pvh_pd:
        .set    i, 0
        .rept   512
        .quad   (i << 21) | 0x83
        .set    i, i + 1
        .endr

        .section .bss
        .balign 8
        .globl kctx_rsp, ap_slot
kctx_rsp:
        .quad   0
ap_slot:
        .long   0

        .section .noinit, "aw", @nobits
        .balign 4096
        .globl bsp_stack_top, ap_stacks
        .space  16384
bsp_stack_top:
ap_stacks:
        .space  AP_STACK_SIZE * (MAX_APS + 1)
