/*
 * probe.softint=1: execute int3 and int $0x80 at CPL0. kvm-pvm's instruction emulator cannot run
 * them (KVM_EXIT_INTERNAL_ERROR); with the VMM's PVM compatibility mode on, the VMM reflects each
 * into the guest, so the IDT handler must see the vector with RIP just after the instruction.
 * Reports: PASS|FAIL softint_int3 / softint_int80 vec=.. rip=.. want=..
 */
#include "probe.h"

extern volatile u64 soft_expect_vec, soft_seen_vec, soft_seen_rip;

static void check(const char *name, u64 vec, u64 after)
{
    if (soft_seen_vec == vec && soft_seen_rip == after)
        print("PASS %s vec=%lu rip=0x%lx\n", name, soft_seen_vec, soft_seen_rip);
    else
        fail("%s vec=%lu rip=0x%lx want_vec=%lu want_rip=0x%lx\n", name, soft_seen_vec, soft_seen_rip, vec,
             after);
}

static void check_softint(const char *value)
{
    (void)value;
    u64 after;
    soft_seen_vec = ~0ul;
    soft_expect_vec = 3;
    __asm__ volatile("int3\n1: lea 1b(%%rip), %0" : "=r"(after) : : "memory");
    check("softint_int3", 3, after);
    soft_seen_vec = ~0ul;
    soft_expect_vec = 0x80;
    __asm__ volatile("int $0x80\n1: lea 1b(%%rip), %0" : "=r"(after) : : "memory");
    check("softint_int80", 0x80, after);
}

PROBE_TEST("softint", check_softint);
