/*
 * Sparkler probe guest: a freestanding x86_64 program that a VMM boots like a Linux kernel and that
 * checks from the inside what the VMM gave it.  Results go to COM1 (0x3f8) as lines
 *
 *     PASS|FAIL|INFO <name> k=v ...
 *
 * starting with "INFO probe start" and ending with "INFO probe done fails=N".  Behaviour is chosen
 * with probe.<key>=<value> tokens on the kernel command line (see the table in probe.py / the
 * report in docs).  The run ends with `out 0xf4` (isa-debug-exit under QEMU, harmless elsewhere),
 * then the i8042 reset `out 0x64, 0xfe`, then `cli; hlt` forever.
 *
 * Host facts this is written for (kvm-pvm): CPL0 code is emulated at ~0.75 us per instruction while
 * CPL3 runs natively, so bulk loops (initrd checksum, page touching) run at CPL3 through run_user().
 * int3 / int n are never used (except by softint.c, on purpose); asserts are ud2.
 *
 * Layout: probe.h (shared declarations), probe.c (boot checks and main), virtio.{h,c} (virtio-mmio
 * discovery and a polling split virtqueue), one file per device driver (blk.c, ...) registered with
 * PROBE_TEST; probe.py compiles every .c file of this directory.
 */

#include "probe.h"


/* ---------------------------------------------------------------------------------------------
 * Symbols from entry.S and the linker script
 */
extern char __image_start[], __image_end[];
extern char isr_stubs[];
extern char tramp_start[], tramp_end[], tramp_cr3[];
extern char user_exit[];
extern const struct probe_test __start_probe_tests[], __stop_probe_tests[];
extern u64 gdt[];
extern u32 ap_slot;
extern u64 run_user(u64 (*fn)(u64), u64 arg, u64 user_stack_top);
extern void user_return(u64 result) __attribute__((noreturn));

struct frame {
    u64 r15, r14, r13, r12, r11, r10, r9, r8, rdi, rsi, rbp, rbx, rdx, rcx, rax;
    u64 vec, err, rip, cs, rflags, rsp, ss;
};

/* ---------------------------------------------------------------------------------------------
 * Freestanding basics
 */
void *memset(void *d, int c, u64 n)
{
    void *r = d;
    __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
    return r;
}

void *memcpy(void *d, const void *s, u64 n)
{
    void *r = d;
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
    return r;
}


/* ---------------------------------------------------------------------------------------------
 * Serial output: COM1 THR directly, no LSR polling (the VMM's UART is always ready).
 */
void put_char(char c) { outb(COM1, (u8)c); }

void put_str(const char *s)
{
    while (*s)
        put_char(*s++);
}

static void put_num(u64 v, unsigned base, int neg)
{
    char buf[24];
    int i = 23;
    buf[i] = 0;
    do {
        buf[--i] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v);
    if (neg)
        buf[--i] = '-';
    put_str(buf + i);
}

/* printf subset: %s %c %d %u %x, with optional 'l' for 64-bit; %% */
static void vprint(const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            put_char(*fmt);
            continue;
        }
        fmt++;
        int is_long = 0;
        if (*fmt == 'l') {
            is_long = 1;
            fmt++;
        }
        switch (*fmt) {
        case 's': put_str(va_arg(ap, const char *)); break;
        case 'c': put_char((char)va_arg(ap, int)); break;
        case 'd': {
            i64 v = is_long ? va_arg(ap, i64) : va_arg(ap, int);
            put_num(v < 0 ? (u64)-v : (u64)v, 10, v < 0);
            break;
        }
        case 'u': put_num(is_long ? va_arg(ap, u64) : va_arg(ap, u32), 10, 0); break;
        case 'x': put_num(is_long ? va_arg(ap, u64) : va_arg(ap, u32), 16, 0); break;
        case '%': put_char('%'); break;
        default: put_char('?'); break;
        }
    }
}

__attribute__((format(printf, 1, 2))) void print(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprint(fmt, ap);
    va_end(ap);
}

static volatile u32 fails;

__attribute__((format(printf, 1, 2))) void fail(const char *fmt, ...)
{
    va_list ap;
    __atomic_fetch_add(&fails, 1, __ATOMIC_SEQ_CST);
    put_str("FAIL ");
    va_start(ap, fmt);
    vprint(fmt, ap);
    va_end(ap);
}

__attribute__((noreturn)) void finish(void)
{
    u32 n = fails;
    print("INFO probe done fails=%u\n", n);
    outb(0xf4, n ? 1 : 0);  /* isa-debug-exit under QEMU; no device on Firecracker-style VMMs */
    outb(0x64, 0xfe);       /* i8042 CPU reset: the VMM stops (exit code 0) */
    for (;;)
        __asm__ volatile("cli; hlt");
}

/* ---------------------------------------------------------------------------------------------
 * Command line: probe.<key>=<value> tokens
 */
const char *cmdline = "";

const char *cmd_get(const char *key)
{
    const char *p = cmdline;
    u64 klen = strlen_(key);
    while (*p) {
        while (*p == ' ')
            p++;
        const char *tok = p;
        if (tok[0] == 'p' && tok[1] == 'r' && tok[2] == 'o' && tok[3] == 'b' && tok[4] == 'e' &&
            tok[5] == '.') {
            const char *k = tok + 6;
            u64 i = 0;
            while (i < klen && k[i] == key[i])
                i++;
            if (i == klen && k[i] == '=')
                return k + i + 1;
        }
        while (*p && *p != ' ')
            p++;
    }
    return 0;
}

int parse_u64(const char *s, u64 *out)
{
    u64 v = 0;
    int base = 10, n = 0;
    if (!s)
        return 0;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s += 2;
    }
    for (;; s++, n++) {
        int d;
        char c = *s;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (base == 16 && c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (base == 16 && c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            break;
        v = v * (u64)base + (u64)d;
    }
    if (n == 0)
        return 0;
    *out = v;
    return 1;
}

int cmd_u64(const char *key, u64 *out) { return parse_u64(cmd_get(key), out); }

u64 cmd_u64_or(const char *key, u64 dflt)
{
    u64 v;
    return cmd_u64(key, &v) ? v : dflt;
}

int cmd_is(const char *key, const char *value)
{
    const char *v = cmd_get(key);
    if (!v)
        return 0;
    while (*value && *v == *value) {
        v++;
        value++;
    }
    return *value == 0 && (*v == 0 || *v == ' ');
}

/* ---------------------------------------------------------------------------------------------
 * Descriptor tables, TSS, page tables
 */
struct idt_entry {
    u16 off_lo, sel;
    u8 ist, type;
    u16 off_mid;
    u32 off_hi, zero;
} __attribute__((packed));

struct tss {
    u32 reserved0;
    u64 rsp[3];
    u64 reserved1;
    u64 ist[7];
    u64 reserved2;
    u16 reserved3, iomap_base;
} __attribute__((packed));

static struct idt_entry idt[256] __attribute__((aligned(16)));
struct {
    u16 pad[3];
    u16 limit;
    u64 base;
} __attribute__((packed, aligned(8))) idt_desc;
/* idt_ptr is the 10-byte lidt operand inside idt_desc (after 6 bytes of padding) */
__asm__(".globl idt_ptr\n.set idt_ptr, idt_desc + 6\n");
static struct tss tss __attribute__((aligned(16)));

#define PT_P 0x1ul
#define PT_RW 0x2ul
#define PT_US 0x4ul
#define PT_PWT 0x8ul
#define PT_PCD 0x10ul
#define PT_PS 0x80ul
#define N_PD 16 /* 2 MiB-page directories available: 16 GiB of mappable space */

static u64 pml4[512] __attribute__((aligned(4096), section(".noinit")));
static u64 pdpt[512] __attribute__((aligned(4096), section(".noinit")));
static u64 pd_pool[N_PD][512] __attribute__((aligned(4096), section(".noinit")));
static u8 trap_stack[8192] __attribute__((aligned(16), section(".noinit")));
static u8 user_stack[16384] __attribute__((aligned(16), section(".noinit")));
static int pd_used;

static void setup_idt(void)
{
    for (int v = 0; v < 256; v++) {
        u64 h = (u64)isr_stubs + 16ul * (u64)v;
        idt[v].off_lo = (u16)h;
        idt[v].sel = KCODE;
        idt[v].ist = 0;
        idt[v].type = 0x8e; /* present, DPL0, 64-bit interrupt gate */
        idt[v].off_mid = (u16)(h >> 16);
        idt[v].off_hi = (u32)(h >> 32);
        idt[v].zero = 0;
    }
    idt_desc.limit = sizeof(idt) - 1;
    idt_desc.base = (u64)idt;
    __asm__ volatile("lidt %0" : : "m"(idt_desc.limit));
}

static void setup_tss(void)
{
    u64 base = (u64)&tss;
    u64 limit = sizeof(tss) - 1;
    tss.rsp[0] = (u64)(trap_stack + sizeof(trap_stack));
    tss.iomap_base = sizeof(tss);
    gdt[5] = (limit & 0xffff) | ((base & 0xffffff) << 16) | (0x89ul << 40) | (((limit >> 16) & 0xf) << 48) |
             (((base >> 24) & 0xff) << 56);
    gdt[6] = base >> 32;
    __asm__ volatile("ltr %w0" : : "r"(TSS_SEL));
}

/* Map [gpa, gpa+size) with 2 MiB pages (identity), allocating directories from pd_pool. */
static u64 map_limit; /* everything below this is mapped (plus any higher RAM regions mapped) */

static int map_2m(u64 gpa, u64 size, u64 extra_flags)
{
    for (u64 a = gpa & ~(2 * MIB - 1); a < gpa + size; a += 2 * MIB) {
        u64 pdpt_i = a >> 30;
        if (pdpt_i >= 512)
            return 0;
        if (!(pdpt[pdpt_i] & PT_P)) {
            if (pd_used >= N_PD)
                return 0;
            u64 *pd = pd_pool[pd_used++];
            memset(pd, 0, 4096);
            pdpt[pdpt_i] = (u64)pd | PT_P | PT_RW | PT_US;
        }
        u64 *pd = (u64 *)(pdpt[pdpt_i] & ~0xffful);
        pd[(a >> 21) & 511] = a | PT_P | PT_RW | PT_US | PT_PS | extra_flags;
    }
    return 1;
}

int is_mapped(u64 addr, u64 size)
{
    for (u64 a = addr & ~(2 * MIB - 1); a < addr + size; a += 2 * MIB) {
        u64 i = a >> 30;
        if (i >= 512 || !(pdpt[i] & PT_P))
            return 0;
        u64 *pd = (u64 *)(pdpt[i] & ~0xffful);
        if (!(pd[(a >> 21) & 511] & PT_P))
            return 0;
    }
    return 1;
}

static void setup_paging(void)
{
    memset(pml4, 0, sizeof(pml4));
    memset(pdpt, 0, sizeof(pdpt));
    pml4[0] = (u64)pdpt | PT_P | PT_RW | PT_US;
    map_2m(0, 3 * GIB, 0);
    map_2m(3 * GIB, 1 * GIB, PT_PCD | PT_PWT); /* MMIO gap: boot timer, virtio, ECAM, IOAPIC, LAPIC */
    map_limit = 4 * GIB;
    u64 cr4;
    __asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
    cr4 &= ~((1ul << 20) | (1ul << 21)); /* no SMEP/SMAP: every page is a user page */
    __asm__ volatile("mov %0, %%cr4" : : "r"(cr4));
    __asm__ volatile("mov %0, %%cr3" : : "r"((u64)pml4) : "memory");
}

/* ---------------------------------------------------------------------------------------------
 * Exceptions and interrupts
 */
void lapic_write(u32 reg, u32 v) { mmio_write32(LAPIC_BASE + reg, v); }
u32 lapic_read(u32 reg) { return mmio_read32(LAPIC_BASE + reg); }

static volatile int lapic_ready;
volatile u32 irq_expect_vector; /* a device test's interrupt vector: counted in irq_hits, not a failure */
volatile u32 irq_hits;

/* softint.c: a vector it raised on purpose with int3 / int n is recorded here and returns. */
volatile u64 soft_expect_vec = ~0ul, soft_seen_vec = ~0ul, soft_seen_rip;

void exc_handler(struct frame *f)
{
    if (f->vec == 6 && (f->cs & 3) == 3 && f->rip == (u64)user_exit)
        user_return(f->rax);
    if (f->vec >= 32 && f->vec == irq_expect_vector) {
        irq_hits++;
        lapic_write(0xb0, 0); /* EOI */
        return;
    }
    if (f->vec == soft_expect_vec) {
        soft_seen_vec = f->vec;
        soft_seen_rip = f->rip;
        soft_expect_vec = ~0ul;
        return;
    }
    if (f->vec >= 32) {
        fail("unexpected_irq vec=%lu rip=0x%lx\n", f->vec, f->rip);
        if (lapic_ready)
            lapic_write(0xb0, 0);
        return;
    }
    u64 cr2;
    __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
    fail("exception vec=%lu rip=0x%lx err=0x%lx cr2=0x%lx cs=0x%lx rsp=0x%lx\n", f->vec, f->rip, f->err,
         cr2, f->cs, f->rsp);
    finish();
}

/* ---------------------------------------------------------------------------------------------
 * LAPIC clock: the timer in one-shot mode, masked, divide by 16, counting down from 2^32-1.
 * KVM's LAPIC timer runs at 1 GHz (bus cycle 1 ns), so one tick is 16 ns; 2^32 ticks ~ 68 s.
 */
static void lapic_init(void)
{
    u64 base = rdmsr(0x1b);
    print("INFO lapic base_msr=0x%lx\n", base);
    if (!(base & (1ul << 11)))
        wrmsr(0x1b, base | (1ul << 11));
    lapic_write(0xf0, 0x1ff);      /* SVR: software enable, spurious vector 0xff */
    lapic_write(0x320, 0x100f0);   /* LVT timer: masked, one-shot */
    lapic_write(0x3e0, 0x3);       /* divide by 16 */
    lapic_write(0x380, 0xffffffff);
    lapic_ready = 1;
}

u32 clock_now(void) { return 0xffffffffu - lapic_read(0x390); }
u32 ms_since(u32 start) { return (clock_now() - start) / LAPIC_TICKS_PER_MS; }

void delay_us(u32 us)
{
    u32 start = clock_now();
    u32 ticks = us * (LAPIC_TICKS_PER_MS / 1000);
    while (clock_now() - start < ticks)
        cpu_relax();
}

/* ---------------------------------------------------------------------------------------------
 * Boot information: Linux boot_params or PVH hvm_start_info
 */
struct e820 {
    u64 addr, size;
    u32 type;
};

static struct {
    int pvh;
    u64 info;
    u64 initrd_addr, initrd_size;
    u32 n_e820;
    struct e820 e820[MAX_E820];
} boot;


static void read_linux_boot_params(u64 bp)
{
    u32 cmd_ptr = rd32(bp + 0x228);
    u32 cmd_size = rd32(bp + 0x238);
    u8 loader = rd8(bp + 0x210);
    u16 boot_flag = rd16(bp + 0x1fe);
    u32 header = rd32(bp + 0x202);
    u32 rd_image = rd32(bp + 0x218);
    u32 rd_size = rd32(bp + 0x21c);
    u64 rd_image_hi = rd32(bp + 0x0c0), rd_size_hi = rd32(bp + 0x0c4);
    char hdr[5] = {(char)header, (char)(header >> 8), (char)(header >> 16), (char)(header >> 24), 0};
    for (int i = 0; i < 4; i++)
        if (hdr[i] < 0x20 || hdr[i] > 0x7e)
            hdr[i] = '?';

    if (cmd_ptr)
        cmdline = (const char *)(u64)cmd_ptr;
    boot.initrd_addr = rd_image | (rd_image_hi << 32);
    boot.initrd_size = rd_size | (rd_size_hi << 32);
    print("INFO boot_params loader=0x%x boot_flag=0x%x header=%s version=0x%x cmd_line_ptr=0x%x "
          "cmdline_size=%u ramdisk_image=0x%lx ramdisk_size=%lu kernel_alignment=0x%x\n",
          loader, boot_flag, hdr, rd16(bp + 0x206), cmd_ptr, cmd_size, boot.initrd_addr, boot.initrd_size,
          rd32(bp + 0x230));

    u32 n = rd8(bp + 0x1e8);
    if (n > MAX_E820)
        n = MAX_E820;
    for (u32 i = 0; i < n; i++) {
        u64 e = bp + 0x2d0 + 20ul * i;
        boot.e820[i].addr = rd64(e);
        boot.e820[i].size = rd64(e + 8);
        boot.e820[i].type = rd32(e + 16);
    }
    boot.n_e820 = n;

    int ok = 1;
    if (loader != 0xff) {
        fail("boot_params what=type_of_loader value=0x%x expected=0xff\n", loader);
        ok = 0;
    }
    if (boot_flag != 0xaa55) {
        fail("boot_params what=boot_flag value=0x%x expected=0xaa55\n", boot_flag);
        ok = 0;
    }
    if (header != 0x53726448) {
        fail("boot_params what=header value=0x%x expected=HdrS\n", header);
        ok = 0;
    }
    if (!cmd_ptr) {
        fail("boot_params what=cmd_line_ptr value=0\n");
        ok = 0;
    } else if (cmd_size < strlen_(cmdline)) {
        fail("boot_params what=cmdline_size value=%u strlen=%lu\n", cmd_size, strlen_(cmdline));
        ok = 0;
    }
    if (ok)
        print("PASS boot_params\n");
}

static void read_pvh_start_info(u64 si)
{
    u32 magic = rd32(si), version = rd32(si + 4), nr_modules = rd32(si + 12);
    u64 modlist = rd64(si + 16), cmd = rd64(si + 24);
    print("INFO pvh_start_info magic=0x%x version=%u flags=0x%x nr_modules=%u rsdp=0x%lx\n", magic, version,
          rd32(si + 8), nr_modules, rd64(si + 32));
    if (magic != 0x336ec578)
        fail("pvh_start_info what=magic value=0x%x\n", magic);
    else
        print("PASS pvh_start_info\n");
    if (cmd)
        cmdline = (const char *)cmd;
    if (nr_modules && modlist) {
        boot.initrd_addr = rd64(modlist);
        boot.initrd_size = rd64(modlist + 8);
    }
    if (version >= 1) {
        u64 mm = rd64(si + 40);
        u32 n = rd32(si + 48);
        if (n > MAX_E820)
            n = MAX_E820;
        for (u32 i = 0; i < n; i++) {
            u64 e = mm + 24ul * i;
            boot.e820[i].addr = rd64(e);
            boot.e820[i].size = rd64(e + 8);
            boot.e820[i].type = rd32(e + 16);
        }
        boot.n_e820 = n;
    }
}

/* ---------------------------------------------------------------------------------------------
 * e820
 */
static int e820_has(u64 addr, u64 size, u32 type)
{
    for (u32 i = 0; i < boot.n_e820; i++)
        if (boot.e820[i].addr == addr && boot.e820[i].size == size && boot.e820[i].type == type)
            return 1;
    return 0;
}

int e820_ram_contains(u64 addr, u64 size)
{
    for (u32 i = 0; i < boot.n_e820; i++) {
        struct e820 *e = &boot.e820[i];
        if (e->type == 1 && addr >= e->addr && addr + size <= e->addr + e->size)
            return 1;
    }
    return 0;
}

static u64 ram_total;

static void check_e820(int fc_layout)
{
    u32 n = boot.n_e820;
    int ok = 1;
    print("INFO e820 n=%u\n", n);
    ram_total = 0;
    for (u32 i = 0; i < n; i++) {
        struct e820 *e = &boot.e820[i];
        print("INFO e820 i=%u addr=0x%lx size=0x%lx type=%u\n", i, e->addr, e->size, e->type);
        if (e->type == 1)
            ram_total += e->size;
    }
    print("INFO mem total=%lu\n", ram_total);
    if (n == 0) {
        fail("e820 what=empty\n");
        return;
    }
    /* Firecracker writes the table unsorted (low RAM, the two reserved ranges, then the RAM
     * regions) and Linux sorts and sanitises it itself, so order is only reported; probe.e820_sorted=1
     * makes an unsorted table a failure. */
    int sorted = 1;
    for (u32 i = 1; i < n; i++)
        if (boot.e820[i].addr < boot.e820[i - 1].addr)
            sorted = 0;
    print("INFO e820 sorted=%d\n", sorted);
    if (!sorted && cmd_is("e820_sorted", "1")) {
        fail("e820 what=unsorted\n");
        ok = 0;
    }
    for (u32 i = 1; i < n; i++) /* insertion sort, drop nothing */
        for (u32 j = i; j > 0 && boot.e820[j].addr < boot.e820[j - 1].addr; j--) {
            struct e820 t = boot.e820[j];
            boot.e820[j] = boot.e820[j - 1];
            boot.e820[j - 1] = t;
        }
    for (u32 i = 0; i < n; i++)
        if (boot.e820[i].size == 0 && fc_layout) {
            fail("e820 what=empty_entry i=%u\n", i);
            ok = 0;
        }
    for (u32 i = 1; i < n; i++) {
        struct e820 *a = &boot.e820[i - 1], *b = &boot.e820[i];
        if (b->size && b->addr < a->addr + a->size) {
            fail("e820 what=overlapping i=%u addr=0x%lx prev_end=0x%lx\n", i, b->addr,
                 a->addr + a->size);
            ok = 0;
        }
    }
    int himem = 0;
    for (u32 i = 0; i < n; i++)
        if (boot.e820[i].type == 1 && boot.e820[i].addr == FC_HIMEM)
            himem = 1;
    if (!himem) {
        fail("e820 what=no_ram_at_1MiB\n");
        ok = 0;
    }
    u64 mem_mib;
    if (cmd_u64("mem_mib", &mem_mib)) {
        u64 mem = mem_mib * MIB;
        /* [0x9fc00, 1 MiB) is never RAM: the e820 RAM total is the memory size minus that hole */
        u64 expected = mem - (FC_HIMEM - FC_EBDA_START);
        if (!fc_layout) {
            if (ram_total > mem || ram_total + MIB < mem) {
                fail("e820 what=ram_total total=%lu mem=%lu\n", ram_total, mem);
                ok = 0;
            }
        } else if (ram_total != expected) {
            fail("e820 what=ram_total total=%lu expected=%lu mem_mib=%lu\n", ram_total, expected, mem_mib);
            ok = 0;
        }
        if (fc_layout) {
            u64 low_end = mem < FC_MMIO32_START ? mem : FC_MMIO32_START;
            if (!e820_has(FC_HIMEM, low_end - FC_HIMEM, 1)) {
                fail("e820 what=low_ram expected_addr=0x%lx expected_size=0x%lx\n", FC_HIMEM,
                     low_end - FC_HIMEM);
                ok = 0;
            }
            if (mem > FC_MMIO32_START && !e820_has(FC_RAM64_START, mem - FC_MMIO32_START, 1)) {
                fail("e820 what=high_ram expected_addr=0x%lx expected_size=0x%lx\n", FC_RAM64_START,
                     mem - FC_MMIO32_START);
                ok = 0;
            }
        }
    }
    if (fc_layout) {
        if (!e820_has(0, FC_EBDA_START, 1)) {
            fail("e820 what=base_ram expected=[0x0,0x9fc00)\n");
            ok = 0;
        }
        if (!e820_has(FC_EBDA_START, FC_SYSTEM_MEM_END - FC_EBDA_START, 2)) {
            fail("e820 what=system_memory_reserved expected=[0x9fc00,0xe0000)\n");
            ok = 0;
        }
        if (!e820_has(FC_PCI_MMCONFIG, FC_PCI_MMCONFIG_SIZE, 2)) {
            fail("e820 what=pci_mmconfig_reserved expected=[0xeec00000,+256MiB)\n");
            ok = 0;
        }
        for (u32 i = 0; i < n; i++) {
            struct e820 *e = &boot.e820[i];
            if (e->type == 1 && e->addr < 4 * GIB && e->addr + e->size > FC_MMIO32_START) {
                fail("e820 what=ram_in_mmio_gap addr=0x%lx size=0x%lx\n", e->addr, e->size);
                ok = 0;
            }
        }
    }
    if (ok)
        print("PASS e820 n=%u ram_total=%lu\n", n, ram_total);
}

/* Map RAM above 4 GiB (up to the pool's capacity) and check that each RAM region reads back a
 * pattern at its first and last quadword (saved and restored; the image itself is skipped). */
static void check_ram_access(void)
{
    for (u32 i = 0; i < boot.n_e820; i++) {
        struct e820 *e = &boot.e820[i];
        if (e->type == 1 && e->addr >= map_limit)
            if (!map_2m(e->addr, e->size, 0))
                print("INFO ram_access unmapped addr=0x%lx size=0x%lx (page-table pool full)\n", e->addr,
                      e->size);
    }
    __asm__ volatile("mov %%cr3, %%rax; mov %%rax, %%cr3" ::: "rax", "memory");
    int ok = 1, regions = 0;
    for (u32 i = 0; i < boot.n_e820; i++) {
        struct e820 *e = &boot.e820[i];
        if (e->type != 1 || e->size < 16)
            continue;
        u64 probes[2] = {e->addr, e->addr + e->size - 8};
        if (e->addr <= (u64)__image_start && (u64)__image_start < e->addr + e->size)
            probes[0] = probes[1];
        for (int k = 0; k < 2; k++) {
            u64 a = probes[k] & ~7ul;
            if (!is_mapped(a, 8))
                continue;
            volatile u64 *p = (volatile u64 *)a;
            u64 old = *p, pat = 0x5a5aa5a5c3c33c3cul ^ a;
            *p = pat;
            u64 got = *p;
            *p = old;
            if (got != pat) {
                fail("ram_access addr=0x%lx wrote=0x%lx read=0x%lx\n", a, pat, got);
                ok = 0;
            }
        }
        regions++;
    }
    if (ok)
        print("PASS ram_access regions=%d\n", regions);
}

/* ---------------------------------------------------------------------------------------------
 * CPL3 helpers (these run natively on PVM, ~2500x faster than CPL0)
 */
int user_ok;

static u64 user_selftest(u64 n)
{
    u64 s = 0;
    for (u64 i = 1; i <= n; i++)
        s += i;
    return s;
}

static u64 user_fnv1a(u64 arg)
{
    struct span *sp = (struct span *)arg;
    const volatile u8 *p = (const volatile u8 *)sp->addr;
    u32 h = 0x811c9dc5u;
    for (u64 i = 0; i < sp->size; i++) {
        h ^= p[i];
        h *= 0x01000193u;
    }
    return h;
}

/* write one byte per 4 KiB page, then read them all back; returns the number of mismatches */
static u64 user_touch(u64 arg)
{
    struct span *sp = (struct span *)arg;
    u64 bad = 0;
    for (u64 a = sp->addr; a < sp->addr + sp->size; a += 4096)
        *(volatile u8 *)a = (u8)((a >> 12) | 1);
    for (u64 a = sp->addr; a < sp->addr + sp->size; a += 4096)
        if (*(volatile u8 *)a != (u8)((a >> 12) | 1))
            bad++;
    return bad;
}

u64 call_user(u64 (*fn)(u64), u64 arg)
{
    if (user_ok)
        return run_user(fn, arg, (u64)(user_stack + sizeof(user_stack)));
    return fn(arg); /* CPL0 fallback (slow under emulation) */
}

static void check_user_mode(void)
{
    if (cmd_is("user", "0")) {
        print("INFO user_mode disabled\n");
        return;
    }
    u64 got = run_user(user_selftest, 1000, (u64)(user_stack + sizeof(user_stack)));
    if (got == 500500) {
        user_ok = 1;
        print("PASS user_mode\n");
    } else {
        fail("user_mode got=%lu expected=500500\n", got);
    }
}

/* ---------------------------------------------------------------------------------------------
 * initrd
 */
static void check_initrd(void)
{
    u64 want;
    int have_want = cmd_u64("initrd_sum", &want);
    if (boot.initrd_size == 0) {
        if (have_want)
            fail("initrd what=missing expected_sum=0x%lx\n", want);
        else
            print("INFO initrd none\n");
        return;
    }
    if (!e820_ram_contains(boot.initrd_addr, boot.initrd_size) || !is_mapped(boot.initrd_addr, boot.initrd_size)) {
        fail("initrd what=not_in_ram addr=0x%lx size=%lu\n", boot.initrd_addr, boot.initrd_size);
        return;
    }
    struct span sp = {boot.initrd_addr, boot.initrd_size};
    u32 start = clock_now();
    u32 sum = (u32)call_user(user_fnv1a, (u64)&sp);
    print("INFO initrd addr=0x%lx size=%lu fnv1a=0x%x ms=%u\n", boot.initrd_addr, boot.initrd_size, sum,
          ms_since(start));
    if (boot.initrd_addr & 0xfff)
        fail("initrd what=unaligned addr=0x%lx\n", boot.initrd_addr);
    if (!have_want)
        print("PASS initrd size=%lu sum=0x%x\n", boot.initrd_size, sum);
    else if ((u32)want == sum)
        print("PASS initrd size=%lu sum=0x%x\n", boot.initrd_size, sum);
    else
        fail("initrd what=checksum size=%lu sum=0x%x expected=0x%x\n", boot.initrd_size, sum, (u32)want);
}

/* ---------------------------------------------------------------------------------------------
 * MP table (Intel MP spec 1.4)
 */
static u8 mp_apic_ids[64];
static u32 mp_ncpus;

static u8 sum_bytes(u64 a, u64 n)
{
    u8 s = 0;
    for (u64 i = 0; i < n; i++)
        s += rd8(a + i);
    return s;
}

static u64 mp_scan(u64 start, u64 len)
{
    for (u64 a = start; a + 16 <= start + len; a += 16)
        if (rd32(a) == 0x5f504d5f) /* "_MP_" */
            return a;
    return 0;
}

static void check_mptable(int fc_layout)
{
    u64 want_cpus;
    int have_want = cmd_u64("cpus", &want_cpus);
    u64 ebda = (u64)rd16(0x40e) << 4;
    u64 fp = mp_scan(FC_EBDA_START, 0x400);
    if (!fp && ebda >= 0x80000 && ebda < 0xa0000)
        fp = mp_scan(ebda, 0x400);
    if (!fp)
        fp = mp_scan(0xf0000, 0x10000);
    if (!fc_layout) {
        print("INFO mptable skipped layout=none%s\n", fp ? " found=1" : " found=0");
        return;
    }
    if (!fp) {
        if (have_want)
            fail("mptable what=no_floating_pointer\n");
        else
            print("INFO mptable absent\n");
        return;
    }
    int ok = 1;
    u8 len16 = rd8(fp + 8), rev = rd8(fp + 9);
    u64 cfg = rd32(fp + 4);
    print("INFO mptable fp=0x%lx spec_rev=%u config=0x%lx feature1=%u\n", fp, rev, cfg, rd8(fp + 11));
    if (len16 != 1 || sum_bytes(fp, 16) != 0) {
        fail("mptable what=floating_pointer_checksum length=%u\n", len16);
        ok = 0;
    }
    if (!cfg || rd32(cfg) != 0x504d4350) { /* "PCMP" */
        fail("mptable what=config_signature addr=0x%lx\n", cfg);
        return;
    }
    u16 base_len = rd16(cfg + 4), count = rd16(cfg + 0x22);
    u32 lapic = rd32(cfg + 0x24);
    if (sum_bytes(cfg, base_len) != 0) {
        fail("mptable what=config_checksum length=%u\n", base_len);
        ok = 0;
    }
    if (lapic != LAPIC_BASE) {
        fail("mptable what=lapic_addr value=0x%x\n", lapic);
        ok = 0;
    }
    u32 ncpu = 0, nioapic = 0, nbus = 0, nint = 0, nlint = 0, bsp = 0, ioapic_ok = 0;
    u64 p = cfg + 0x2c, end = cfg + base_len;
    for (u32 i = 0; i < count && p < end; i++) {
        u8 type = rd8(p);
        if (type == 0) {
            u8 id = rd8(p + 1), flags = rd8(p + 3);
            if (flags & 1) {
                if (ncpu < sizeof(mp_apic_ids))
                    mp_apic_ids[ncpu] = id;
                ncpu++;
            }
            if (flags & 2) {
                bsp++;
                if (id != 0) {
                    fail("mptable what=bsp_apic_id value=%u\n", id);
                    ok = 0;
                }
            }
            p += 20;
        } else if (type <= 4) {
            if (type == 1)
                nbus++;
            if (type == 2) {
                nioapic++;
                if (rd32(p + 4) == IOAPIC_BASE && (rd8(p + 3) & 1))
                    ioapic_ok = 1;
            }
            if (type == 3)
                nint++;
            if (type == 4)
                nlint++;
            p += 8;
        } else {
            fail("mptable what=bad_entry_type type=%u index=%u\n", type, i);
            ok = 0;
            break;
        }
    }
    mp_ncpus = ncpu;
    print("INFO mptable cpus=%u buses=%u ioapics=%u intsrc=%u lintsrc=%u entries=%u\n", ncpu, nbus, nioapic,
          nint, nlint, count);
    if (bsp != 1) {
        fail("mptable what=bsp_count value=%u\n", bsp);
        ok = 0;
    }
    if (!ioapic_ok) {
        fail("mptable what=no_ioapic_at_0xfec00000\n");
        ok = 0;
    }
    if (have_want && ncpu != want_cpus) {
        fail("mptable what=cpus value=%u expected=%lu\n", ncpu, want_cpus);
        ok = 0;
    }
    if (ok)
        print("PASS mptable cpus=%u\n", ncpu);
}

/* ---------------------------------------------------------------------------------------------
 * SMP bring-up: INIT / SIPI / SIPI broadcast to all-excluding-self, each AP checks in.
 */
static volatile u32 ap_online;
static volatile u32 ap_ids[MAX_APS];
static volatile u32 ap_cpuid_ids[MAX_APS];

void ap_main(u64 slot)
{
    u32 id = lapic_read(0x20) >> 24;
    u32 r[4];
    cpuid(1, 0, r);
    ap_ids[slot] = id;
    ap_cpuid_ids[slot] = r[1] >> 24;
    __atomic_fetch_add(&ap_online, 1, __ATOMIC_SEQ_CST);
    for (;;)
        __asm__ volatile("cli; hlt");
}

static u32 bsp_cpuid_id(void)
{
    u32 r[4];
    cpuid(1, 0, r);
    return r[1] >> 24;
}

/* Informational only: on PVM hosts part of CPUID is not virtualised (see pvm-probe-guests.md). */
static void report_cpuid(void)
{
    u32 r[4], v[4], hv[4];
    char vendor[13], hyp[13];
    cpuid(0, 0, v);
    *(u32 *)&vendor[0] = v[1];
    *(u32 *)&vendor[4] = v[3];
    *(u32 *)&vendor[8] = v[2];
    vendor[12] = 0;
    cpuid(1, 0, r);
    cpuid(0x40000000, 0, hv);
    *(u32 *)&hyp[0] = hv[1];
    *(u32 *)&hyp[4] = hv[2];
    *(u32 *)&hyp[8] = hv[3];
    hyp[12] = 0;
    for (int i = 0; i < 12; i++)
        if (hyp[i] == 0)
            break;
        else if (hyp[i] <= 0x20 || hyp[i] > 0x7e)
            hyp[i] = '.';
    print("INFO cpuid vendor=%s max_leaf=0x%x leaf1_eax=0x%x apic_id=%u logical=%u hypervisor_bit=%u "
          "hypervisor=%s tsc_deadline=%u x2apic=%u\n",
          vendor, v[0], r[0], r[1] >> 24, (r[1] >> 16) & 0xff, (r[2] >> 31) & 1, hyp, (r[2] >> 24) & 1,
          (r[2] >> 21) & 1);
}

static void check_smp(void)
{
    u64 want = cmd_u64_or("cpus", 1);
    u64 timeout_ms = cmd_u64_or("smp_timeout_ms", 10000);
    if (want < 2) {
        print("INFO smp skipped cpus=%lu\n", want);
        return;
    }
    if (want - 1 > MAX_APS) {
        fail("smp what=too_many_cpus cpus=%lu max=%d\n", want, MAX_APS + 1);
        return;
    }
    u64 tlen = (u64)(tramp_end - tramp_start);
    memcpy((void *)TRAMP_BASE, tramp_start, tlen);
    *(volatile u32 *)(TRAMP_BASE + (u64)(tramp_cr3 - tramp_start)) = (u32)(u64)pml4;
    u32 vector = (u32)(TRAMP_BASE >> 12);
    u32 bsp_id = lapic_read(0x20) >> 24;

    u32 start = clock_now();
    lapic_write(0x310, 0);
    lapic_write(0x300, 0x000c4500); /* INIT, level assert, all excluding self */
    delay_us(10000);
    lapic_write(0x310, 0);
    lapic_write(0x300, 0x000c4600 | vector); /* SIPI */
    delay_us(200);
    lapic_write(0x310, 0);
    lapic_write(0x300, 0x000c4600 | vector); /* second SIPI, ignored by APs already running */

    while (ap_online < want - 1 && ms_since(start) < timeout_ms)
        for (int i = 0; i < 50; i++)
            cpu_relax();
    u32 online = ap_online + 1;
    u32 elapsed = ms_since(start);
    delay_us(1000); /* catch late or duplicate arrivals */
    print("INFO smp bsp_apic_id=%u online=%u ms=%u slots=%u apic_ids=%u", bsp_id, ap_online + 1, elapsed,
          ap_slot, bsp_id);
    for (u32 i = 0; i < ap_online && i < MAX_APS; i++)
        print(",%u", ap_ids[i]);
    print(" cpuid_apic_ids=%u", bsp_cpuid_id());
    for (u32 i = 0; i < ap_online && i < MAX_APS; i++)
        print(",%u", ap_cpuid_ids[i]);
    print("\n");
    int ok = 1;
    /* every AP id must be distinct, differ from the BSP's and appear in the MP table */
    for (u32 i = 0; i < ap_online && i < MAX_APS; i++) {
        if (ap_ids[i] == bsp_id)
            ok = 0;
        for (u32 j = 0; j < i; j++)
            if (ap_ids[j] == ap_ids[i])
                ok = 0;
        if (mp_ncpus) {
            int found = 0;
            for (u32 k = 0; k < mp_ncpus && k < sizeof(mp_apic_ids); k++)
                if (mp_apic_ids[k] == ap_ids[i])
                    found = 1;
            if (!found)
                ok = 0;
        }
    }
    if (!ok)
        fail("smp what=apic_ids\n");
    if (ap_online + 1 != want)
        fail("smp online=%u expected=%lu timeout_ms=%lu\n", ap_online + 1, want, timeout_ms);
    else if (online == want && ok)
        print("PASS smp online=%u\n", online);
}

/* ---------------------------------------------------------------------------------------------
 * Page touching (for host RSS measurements)
 */
static void do_touch(void)
{
    u64 mib;
    if (!cmd_u64("touch_mib", &mib) || mib == 0)
        return;
    u64 start = ((u64)__image_end + 2 * MIB - 1) & ~(2 * MIB - 1);
    u64 size = mib * MIB;
    if (!e820_ram_contains(start, size) || !is_mapped(start, size)) {
        fail("touch what=not_ram start=0x%lx mib=%lu\n", start, mib);
        return;
    }
    if (boot.initrd_size && start < boot.initrd_addr + boot.initrd_size && boot.initrd_addr < start + size) {
        fail("touch what=overlaps_initrd start=0x%lx mib=%lu\n", start, mib);
        return;
    }
    struct span sp = {start, size};
    u32 t0 = clock_now();
    u64 bad = call_user(user_touch, (u64)&sp);
    u32 ms = ms_since(t0);
    if (bad)
        fail("touch what=readback mismatches=%lu\n", bad);
    else
        print("PASS touch mib=%lu start=0x%lx pages=%lu ms=%u cpl=%d\n", mib, start, size / 4096, ms,
              user_ok ? 3 : 0);
}

/* ---------------------------------------------------------------------------------------------
 * Deliberate faults, for testing the exception path and the harness
 */
static u64 user_fault(u64 arg)
{
    (void)arg;
    __asm__ volatile("ud2");
    return 0;
}

static void do_fault(void)
{
    const char *f = cmd_get("fault");
    if (!f)
        return;
    print("INFO fault kind=");
    for (const char *c = f; *c && *c != ' '; c++)
        put_char(*c);
    print("\n");
    if (cmd_is("fault", "ud"))
        __asm__ volatile("ud2");
    if (cmd_is("fault", "pf"))
        (void)*(volatile u64 *)0x8000000000ul; /* PML4[1] not present */
    if (cmd_is("fault", "gp"))
        (void)*(volatile u64 *)0x8000000000000000ul; /* non-canonical */
    if (cmd_is("fault", "de")) {
        u32 zero = 0, lo = 1, hi = 0;
        __asm__ volatile("divl %2" : "+a"(lo), "+d"(hi) : "r"(zero)); /* C would fold 1/x to x==1 */
    }
    if (cmd_is("fault", "user_ud"))
        run_user(user_fault, 0, (u64)(user_stack + sizeof(user_stack)));
    fail("fault what=no_exception\n");
}

/* ---------------------------------------------------------------------------------------------
 * main
 */
void probe_main(u64 kind, u64 info)
{
    outb(0x21, 0xff); /* mask both 8259s */
    outb(0xa1, 0xff);
    print("INFO probe start\n");
    boot.pvh = kind == 1;
    boot.info = info;
    setup_idt();
    setup_paging();
    setup_tss();
    print("INFO boot protocol=%s info=0x%lx image=0x%lx-0x%lx\n", boot.pvh ? "pvh" : "linux", info,
          (u64)__image_start, (u64)__image_end);

    if (boot.pvh)
        read_pvh_start_info(info);
    else
        read_linux_boot_params(info);
    print("INFO cmdline value=\"%s\"\n", cmdline);

    int fc_layout = !cmd_is("layout", "none");
    report_cpuid();
    lapic_init();
    check_e820(fc_layout);
    check_ram_access();
    check_user_mode();
    check_initrd();
    check_mptable(fc_layout);
    if (cmd_is("smp", "1"))
        check_smp();
    do_touch();
    do_fault();
    if (cmd_is("boot_timer", "1")) {
        /* Firecracker's boot-timer device: a one-byte write of 123 at 0xc0000000 marks "booted". */
        __asm__ volatile("movb %0, (%1)" : : "q"((u8)123), "r"(FC_MMIO32_START) : "memory");
        print("INFO boot_timer written\n");
    }
    for (const struct probe_test *t = __start_probe_tests; t < __stop_probe_tests; t++) {
        const char *value = cmd_get(t->key);
        if (value)
            t->run(value);
    }
    if (cmd_is("hang", "1")) {
        print("INFO hang\n");
        for (;;)
            __asm__ volatile("cli; hlt");
    }
    finish();
}
