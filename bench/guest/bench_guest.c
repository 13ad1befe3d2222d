/*
 * Benchmark guest: booted like a Linux kernel (64-bit entry, RSI = boot_params) or, under QEMU
 * -M microvm, through the PVH note (pvh.S: 32-bit entry, EBX = hvm_start_info), it
 *   1. writes 'S' to COM1 (the host timestamps it: "first guest instruction"),
 *   2. runs bench.pio=N port writes to an unclaimed port (0x80) and bench.mmio=N writes to an
 *      unclaimed guest-physical address inside the boot identity map (0x30000000), each one exit
 *      to the VMM,
 *   3. writes 'E', then with bench.idle=1 halts forever so the host can measure the idle VMM;
 *      otherwise it writes 0 to port 0xf4 (QEMU's isa-debug-exit: QEMU exits with status 1; an
 *      unclaimed port for Sparkler) and resets through the i8042 (Sparkler exits 0).
 * All of it runs at CPL0, which a PVM host emulates: the loop around each exit costs a few us there.
 */
typedef unsigned long u64;
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;

#define COM1 0x3f8
#define UNCLAIMED_PORT 0x80
#define UNCLAIMED_MMIO 0x30000000UL

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }

static u64 param(const char *cmdline, const char *key)
{
	for (const char *p = cmdline; *p; p++) {
		const char *k = key, *q = p;
		while (*k && *q == *k) { k++; q++; }
		if (*k == 0 && *q == '=' && (p == cmdline || p[-1] == ' ')) {
			u64 v = 0;
			for (q++; *q >= '0' && *q <= '9'; q++)
				v = v * 10 + (u64)(*q - '0');
			return v;
		}
	}
	return 0;
}

void bench_main(u8 *info, int pvh)
{
	outb(COM1, 'S');
	/* Linux: boot_params.hdr.cmd_line_ptr (u32 at 0x228); PVH: hvm_start_info.cmdline_paddr (u64 at 24) */
	const char *cmdline = pvh ? (const char *)*(u64 *)(info + 24) : (const char *)(u64)(*(u32 *)(info + 0x228));
	u64 pio = param(cmdline, "bench.pio");
	u64 mmio = param(cmdline, "bench.mmio");
	u64 idle = param(cmdline, "bench.idle");
	for (u64 i = 0; i < pio; i++)
		outb(UNCLAIMED_PORT, (u8)i);
	for (u64 i = 0; i < mmio; i++)
		*(volatile u32 *)UNCLAIMED_MMIO = (u32)i;
	outb(COM1, 'E');
	outb(COM1, '\n');
	if (!idle) {
		outb(0xf4, 0);
		outb(0x64, 0xfe);
	}
	for (;;)
		__asm__ volatile("cli; hlt");
}

__asm__(".globl _start\n_start:\n mov %rsi, %rdi\n xor %esi, %esi\n call bench_main\n");
