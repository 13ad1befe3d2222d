/*
 * PVH entry note (linked only into the "pvh" variant of the probe).
 *
 * XEN_ELFNOTE_PHYS32_ENTRY (type 18, name "Xen"): the 32-bit physical entry point used by QEMU's
 * microvm machine and by Firecracker when the ELF carries it.  The default "linux" variant leaves
 * this note out so that a Firecracker-compatible VMM enters through the Linux 64-bit boot protocol.
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
