/*
 * Benchmark guest, PVH side: the XEN_ELFNOTE_PHYS32_ENTRY note and the 32-bit entry QEMU -M microvm
 * uses (protected mode, paging off, EBX = hvm_start_info; the command line's physical address is
 * the u64 at offset 24). It switches to long mode on static page tables (identity map of the first
 * 1 GiB, 2 MiB pages: covers the image, the stack and the MMIO target 0x30000000) and calls
 * bench_main(start_info, 1). The Linux 64-bit entry (_start, in bench_guest.c) is untouched, so one
 * ELF serves Sparkler (Linux boot protocol) and QEMU (PVH).
 */
        .section .note.Xen, "a"
        .balign 4
        .long   4                       /* namesz: "Xen\0" */
        .long   4                       /* descsz */
        .long   18                      /* XEN_ELFNOTE_PHYS32_ENTRY */
        .asciz  "Xen"
        .balign 4
        .long   _pvh_start
        .balign 4

        .text
        .code32
        .globl _pvh_start
_pvh_start:
        cli
        mov     %ebx, %esi              /* hvm_start_info */
        lgdt    pvh_gdt_ptr
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
        ljmp    $0x08, $pvh64
        .code64
pvh64:
        mov     $0x10, %eax
        mov     %eax, %ds
        mov     %eax, %es
        mov     %eax, %ss
        mov     $pvh_stack_top, %rsp
        mov     %rsi, %rdi              /* start_info */
        mov     $1, %esi                /* pvh = 1 */
        call    bench_main
1:      cli
        hlt
        jmp     1b

        .section .rodata
        .balign 8
pvh_gdt:
        .quad   0
        .quad   0x00af9a000000ffff      /* 0x08 code, 64-bit */
        .quad   0x00cf92000000ffff      /* 0x10 data */
pvh_gdt_end:
        .balign 8
        .word   0, 0, 0
pvh_gdt_ptr:
        .word   pvh_gdt_end - pvh_gdt - 1
        .quad   pvh_gdt

        .section .data
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
        .balign 16
        .space  8192
pvh_stack_top:
