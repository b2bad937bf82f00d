/* Bare-metal Cortex-M7 harness for QEMU's mps2-an500 (no OS, no libc I/O): host files
 * through Arm semihosting. Reads nce_in.bin (NCE_INPUT_BYTES per image), writes NCE_CLASSES
 * int32 logits per image to nce_out.bin and a text report to nce_report.txt:
 *   stack_bytes N        deepest stack use below main's frame (stack painting)
 *   calib I T            a loop of I instructions took T timer ticks
 *   images N
 *   step S LAYER T       timer ticks of step S summed over all images (built with NCE_HOOK_STEPS)
 *   total T              timer ticks of nce_run summed over all images
 * Under `qemu-system-arm -icount shift=0` one instruction advances the virtual clock by 1 ns,
 * so ticks of the 25 MHz CMSDK timer count instructions (calib gives the ratio). */
#include "nce_model.h"
#include "nce_runtime.h"

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _stack_limit, _stack_top;
int main(void);
void nce_reset(void);
static void nce_fault(void);

__attribute__((section(".vectors"), used)) static const uintptr_t nce_vectors[16] = {
    (uintptr_t)&_stack_top, (uintptr_t)nce_reset, (uintptr_t)nce_fault, (uintptr_t)nce_fault,
    (uintptr_t)nce_fault,   (uintptr_t)nce_fault, (uintptr_t)nce_fault, 0, 0, 0, 0,
    (uintptr_t)nce_fault,   (uintptr_t)nce_fault, 0, (uintptr_t)nce_fault, (uintptr_t)nce_fault,
};

/* ---------------------------------------------------------------- semihosting */
#define SYS_OPEN 0x01
#define SYS_CLOSE 0x02
#define SYS_WRITE 0x05
#define SYS_READ 0x06
#define SYS_EXIT 0x18
#define ADP_STOPPED_APPLICATION_EXIT 0x20026
#define ADP_STOPPED_RUNTIME_ERROR 0x20023

static int32_t semi(uint32_t op, const void *arg) {
    register uint32_t r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return (int32_t)r0;
}

static void semi_exit(int ok) {
    semi(SYS_EXIT, (const void *)(uintptr_t)(ok ? ADP_STOPPED_APPLICATION_EXIT : ADP_STOPPED_RUNTIME_ERROR));
    for (;;) {
    }
}

static int32_t semi_open(const char *name, uint32_t mode) {
    uint32_t len = 0, args[3];
    while (name[len] != 0) {
        len++;
    }
    args[0] = (uint32_t)(uintptr_t)name;
    args[1] = mode; /* 1 = "rb", 4 = "w", 5 = "wb" */
    args[2] = len;
    return semi(SYS_OPEN, args);
}

/* Bytes transferred (SYS_READ/SYS_WRITE return the count NOT transferred). */
static uint32_t semi_rw(uint32_t op, int32_t fd, const void *buf, uint32_t len) {
    uint32_t args[3];
    args[0] = (uint32_t)fd;
    args[1] = (uint32_t)(uintptr_t)buf;
    args[2] = len;
    return len - (uint32_t)semi(op, args);
}

static void nce_fault(void) {
    semi_exit(0);
}

void nce_reset(void) {
    uint32_t *src = &_sidata, *dst = &_sdata;
    while (dst < &_edata) {
        *dst++ = *src++;
    }
    for (dst = &_sbss; dst < &_ebss; dst++) {
        *dst = 0;
    }
    semi_exit(main() == 0);
}

/* ---------------------------------------------------------------- timer and report */
#define TIMER0 ((volatile uint32_t *)0x40000000u)

static uint32_t timer_now(void) {
    return TIMER0[1];
}

static void timer_start(void) {
    TIMER0[0] = 0;
    TIMER0[2] = 0xffffffffu;
    TIMER0[1] = 0xffffffffu;
    TIMER0[0] = 1;
}

static char report[64 * (NCE_STEPS + 8)];
static uint32_t report_len;

static void put_str(const char *s) {
    while (*s != 0 && report_len < sizeof report) {
        report[report_len++] = *s++;
    }
}

static void put_u64(uint64_t v) {
    char digits[24];
    int n = 0;
    do {
        digits[n++] = (char)('0' + (int)(v % 10));
        v /= 10;
    } while (v != 0);
    while (n > 0 && report_len < sizeof report) {
        report[report_len++] = digits[--n];
    }
}

static void put_line(const char *key, uint64_t a, uint64_t b, int fields) {
    put_str(key);
    put_str(" ");
    put_u64(a);
    if (fields > 1) {
        put_str(" ");
        put_u64(b);
    }
    put_str("\n");
}

static uint64_t step_ticks[NCE_STEPS + 1];
static int32_t step_layer[NCE_STEPS + 1];
static uint32_t step_mark;

#ifdef NCE_HOOK_STEPS
void nce_hook(uint32_t step, int32_t layer, uint32_t kind, const void *data, uint32_t count) {
    uint32_t now = timer_now();
    (void)kind;
    (void)data;
    (void)count;
    if (step <= NCE_STEPS) {
        step_ticks[step] += step_mark - now;
        step_layer[step] = layer;
    }
    step_mark = timer_now();
}
#endif

/* ---------------------------------------------------------------- stack painting */
#define PAINT 0xa5a5a5a5u

static uintptr_t current_sp(void) {
    uintptr_t sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    return sp;
}

static void paint_stack(uintptr_t below) {
    volatile uint32_t *p = &_stack_limit;
    while ((uintptr_t)p < below) {
        *p++ = PAINT;
    }
}

static uint32_t stack_used(uintptr_t top) {
    volatile uint32_t *p = &_stack_limit;
    while ((uintptr_t)p < top && *p == PAINT) {
        p++;
    }
    return (uint32_t)(top - (uintptr_t)p);
}

/* 2 * n instructions (subs, bne). */
static void calibration_loop(uint32_t n) {
    __asm__ volatile("1: subs %0, %0, #1\n\tbne 1b" : "+r"(n) : : "cc");
}

int main(void) {
    static uint8_t image[NCE_INPUT_BYTES];
    static int32_t logits[NCE_CLASSES];
    uint64_t total = 0;
    uint32_t images = 0, stack = 0, t0, calib;
    uintptr_t top;
    int32_t in = semi_open("nce_in.bin", 1), out = semi_open("nce_out.bin", 5), rep;
    if (in < 0 || out < 0) {
        return 1;
    }
    timer_start();
    t0 = timer_now();
    calibration_loop(1000000u);
    calib = t0 - timer_now();
    top = current_sp() - 64;
    while (semi_rw(SYS_READ, in, image, sizeof image) == sizeof image) {
        int rc;
        if (images == 0) {
            paint_stack(top);
        }
        step_mark = t0 = timer_now();
        rc = nce_run(image, logits);
        total += t0 - timer_now();
        if (images == 0) {
            stack = stack_used(top);
        }
        if (rc != NCE_OK || semi_rw(SYS_WRITE, out, logits, sizeof logits) != sizeof logits) {
            return 1;
        }
        images++;
    }
    semi(SYS_CLOSE, &in);
    semi(SYS_CLOSE, &out);
    put_line("stack_bytes", stack, 0, 1);
    put_line("calib", 2000000u, calib, 2);
    put_line("images", images, 0, 1);
    for (t0 = 0; t0 <= NCE_STEPS; t0++) {
        put_str("step ");
        put_u64(t0);
        put_str(" ");
        if (step_layer[t0] < 0) {
            put_str("-");
        }
        put_u64((uint64_t)(step_layer[t0] < 0 ? -(int64_t)step_layer[t0] : step_layer[t0]));
        put_str(" ");
        put_u64(step_ticks[t0]);
        put_str("\n");
    }
    put_line("total", total, 0, 1);
    rep = semi_open("nce_report.txt", 4);
    return rep < 0 || semi_rw(SYS_WRITE, rep, report, report_len) != report_len;
}
