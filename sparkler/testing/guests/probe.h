/* Shared declarations of the probe guest's C files (see probe.c for what the probe is). */
#ifndef SPARKLER_PROBE_H
#define SPARKLER_PROBE_H
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef long i64;
typedef __builtin_va_list va_list;
#define va_start(v, l) __builtin_va_start(v, l)
#define va_end(v) __builtin_va_end(v)
#define va_arg(v, t) __builtin_va_arg(v, t)

#define KIB 1024ul
#define MIB (1024ul * KIB)
#define GIB (1024ul * MIB)

#define KCODE 0x08
#define TSS_SEL 0x28
#define TRAMP_BASE 0x10000ul
#define MAX_APS 31
#define MAX_E820 128

#define COM1 0x3f8
#define LAPIC_BASE 0xfee00000ul
#define IOAPIC_BASE 0xfec00000ul

/* Firecracker machine model (catalog section 4.1) */
#define FC_EBDA_START 0x9fc00ul
#define FC_SYSTEM_MEM_END 0xe0000ul
#define FC_HIMEM 0x100000ul
#define FC_MMIO32_START 0xc0000000ul
#define FC_PCI_MMCONFIG 0xeec00000ul
#define FC_PCI_MMCONFIG_SIZE (256ul * MIB)
#define FC_RAM64_START (4ul * GIB)

/* ---------------------------------------------------------------------------------------------
 * Freestanding basics and port/MMIO access
 */
void *memset(void *d, int c, u64 n);
void *memcpy(void *d, const void *s, u64 n);

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }

static inline u32 mmio_read32(u64 addr)
{
    u32 v;
    __asm__ volatile("movl (%1), %0" : "=r"(v) : "r"(addr) : "memory");
    return v;
}

static inline void mmio_write32(u64 addr, u32 v)
{
    __asm__ volatile("movl %0, (%1)" : : "r"(v), "r"(addr) : "memory");
}

static inline u64 rdmsr(u32 msr)
{
    u32 lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((u64)hi << 32) | lo;
}

static inline void wrmsr(u32 msr, u64 v)
{
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((u32)v), "d"((u32)(v >> 32)));
}

static inline void cpuid(u32 leaf, u32 sub, u32 r[4])
{
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }

static u64 strlen_(const char *s)
{
    u64 n = 0;
    while (s[n])
        n++;
    return n;
}
static inline u8 inb(u16 port)
{
    u8 v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline u8 rd8(u64 a) { return *(volatile u8 *)a; }
static inline u16 rd16(u64 a) { return *(volatile u16 *)a; }
static inline u32 rd32(u64 a) { return *(volatile u32 *)a; }
static inline u64 rd64(u64 a) { return *(volatile u64 *)a; }
static inline void mb(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

/* ---------------------------------------------------------------------------------------------
 * Reporting over COM1 (probe.c)
 */
void put_char(char c);
void put_str(const char *s);
__attribute__((format(printf, 1, 2))) void print(const char *fmt, ...);
__attribute__((format(printf, 1, 2))) void fail(const char *fmt, ...); /* counts a failure */
__attribute__((noreturn)) void finish(void);

/* probe.<key>=<value> tokens of the kernel command line */
extern const char *cmdline; /* the whole kernel command line */
const char *cmd_get(const char *key);
int parse_u64(const char *s, u64 *out);
int cmd_u64(const char *key, u64 *out);
u64 cmd_u64_or(const char *key, u64 dflt);
int cmd_is(const char *key, const char *value);

/* memory map, clock */
int is_mapped(u64 addr, u64 size);
int e820_ram_contains(u64 addr, u64 size);
void lapic_write(u32 reg, u32 v);
extern volatile u32 irq_expect_vector; /* set by a test that enables an interrupt (exc_handler counts it) */
extern volatile u32 irq_hits;
u32 lapic_read(u32 reg);
#define LAPIC_TICKS_PER_MS 62500u
u32 clock_now(void);            /* LAPIC ticks (16 ns) */
u32 ms_since(u32 start);
void delay_us(u32 us);

/* CPL3 (native on PVM hosts): run fn(arg) in user mode, or at CPL0 when user mode is unavailable */
struct span {
    u64 addr, size;
};
extern int user_ok;
u64 call_user(u64 (*fn)(u64), u64 arg);

/* ---------------------------------------------------------------------------------------------
 * Device tests: each file registers its tests with PROBE_TEST(key, fn); probe_main runs fn() after
 * the core checks when probe.<key>=... is on the command line, in link order.
 */
struct probe_test {
    const char *key;
    void (*run)(const char *value); /* value: what follows "probe.<key>=" */
};
#define PROBE_TEST(key, fn)                                                                            \
    static const struct probe_test probe_test_##fn __attribute__((used, section(".probe_tests"),       \
                                                                   aligned(8))) = {key, fn}

#endif
