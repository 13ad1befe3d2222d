/*
 * probe.kbd=irq|noirq: receive SendCtrlAltDel through the i8042.
 *
 * Writes the i8042 control byte (command 0x60) with the keyboard interrupt enabled (irq) or not
 * (noirq), prints "INFO kbd_waiting" (the test then sends PUT /actions SendCtrlAltDel), polls the
 * status port (interrupts enabled, IOAPIC pin 1 routed to vector KBD_VECTOR) until four bytes have
 * arrived on the data port and reports them with the number of keyboard interrupts taken:
 * "PASS kbd_ctrl_alt_del codes=14,11,e0,71 irq1=1".
 */
#include "probe.h"

#define I8042_DATA 0x60
#define I8042_STATUS 0x64
#define I8042_CMD_WRITE_CTR 0x60
#define CB_KBD_INT 0x01
#define CB_POST_OK 0x04

#define KBD_VECTOR 0x31
#define KBD_GSI 1

static void ioapic_write(u32 reg, u32 v)
{
    mmio_write32(IOAPIC_BASE, reg);
    mmio_write32(IOAPIC_BASE + 0x10, v);
}

/* IOAPIC redirection entry for GSI 1: fixed, physical, edge, active high, to this CPU (or masked) */
static void kbd_route(int enable)
{
    u32 apic_id = lapic_read(0x20) >> 24;
    ioapic_write(0x11 + 2 * KBD_GSI, apic_id << 24);
    ioapic_write(0x10 + 2 * KBD_GSI, KBD_VECTOR | (enable ? 0 : (1u << 16)));
}

static void check_kbd(const char *value)
{
    (void)value;
    int irq = cmd_is("kbd", "irq");
    if (!irq && !cmd_is("kbd", "noirq")) {
        fail("kbd what=bad_mode\n");
        return;
    }
    while (inb(I8042_STATUS) & 1) /* drain anything pending */
        (void)inb(I8042_DATA);
    outb(I8042_STATUS, I8042_CMD_WRITE_CTR);
    outb(I8042_DATA, CB_POST_OK | (irq ? CB_KBD_INT : 0));
    irq_hits = 0;
    irq_expect_vector = KBD_VECTOR;
    kbd_route(1);
    __asm__ volatile("sti");
    print("INFO kbd_waiting\n");
    u8 codes[4];
    u32 n = 0;
    u32 t0 = clock_now();
    while (n < 4 && ms_since(t0) < 30000) {
        if (inb(I8042_STATUS) & 1)
            codes[n++] = inb(I8042_DATA);
        else
            delay_us(1000);
    }
    delay_us(20000); /* an interrupt raised with the last byte has arrived by now */
    __asm__ volatile("cli");
    kbd_route(0);
    irq_expect_vector = 0;
    if (n < 4) {
        fail("kbd_ctrl_alt_del what=timeout got=%u\n", n);
        return;
    }
    u32 irq1 = irq_hits;
    int ok = codes[0] == 0x14 && codes[1] == 0x11 && codes[2] == 0xe0 && codes[3] == 0x71 && irq1 == (u32)irq;
    if (ok)
        print("PASS kbd_ctrl_alt_del codes=%x,%x,%x,%x irq1=%u\n", codes[0], codes[1], codes[2], codes[3], irq1);
    else
        fail("kbd_ctrl_alt_del codes=%x,%x,%x,%x irq1=%u\n", codes[0], codes[1], codes[2], codes[3], irq1);
}
PROBE_TEST("kbd", check_kbd);
