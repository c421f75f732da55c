/* Test harness for qatc objects: `harness INPUT OUTPUT f32|u8 BATCH...` runs the model's f32 (or
 * u8) entry on the first BATCH samples of INPUT (float32 values or codes, one sample after
 * another), for each BATCH in turn, and writes the outputs of every run one after another to
 * OUTPUT. The input, the output and the scratch memory of every call each end exactly where a
 * PROT_NONE page begins, so a read or write past any of them is a crash, not a silent success.
 * Built by tests/aot.rs with -include <the model's header>, whose generic names it uses. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* `bytes` of memory (at least one) that end exactly at an inaccessible page. */
static void *guarded(size_t bytes) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t pages = (bytes + page - 1) / page;
    if (pages == 0)
        pages = 1;
    uint8_t *base = mmap(NULL, (pages + 1) * page, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED || mprotect(base + pages * page, page, PROT_NONE) != 0) {
        perror("mmap");
        exit(2);
    }
    return base + pages * page - bytes;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s INPUT OUTPUT f32|u8 BATCH...\n", argv[0]);
        return 2;
    }
    int codes = strcmp(argv[3], "u8") == 0;
    size_t elem = codes ? 1 : sizeof(float);
    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    fseek(f, 0, SEEK_END);
    long bytes = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *all = malloc(bytes);
    if (!all || fread(all, 1, bytes, f) != (size_t)bytes) {
        fprintf(stderr, "cannot read %s\n", argv[1]);
        return 2;
    }
    fclose(f);
    FILE *g = fopen(argv[2], "wb");
    if (!g) {
        perror(argv[2]);
        return 2;
    }
    for (int a = 4; a < argc; a++) {
        int64_t batch = atoll(argv[a]);
        size_t in_bytes = batch * QATC_MODEL_INPUT_SIZE * elem;
        size_t out_bytes = batch * QATC_MODEL_OUTPUT_SIZE * elem;
        if (batch <= 0 || in_bytes > (size_t)bytes) {
            fprintf(stderr, "batch %s: %s holds too few samples\n", argv[a], argv[1]);
            return 2;
        }
        void *input = guarded(in_bytes);
        void *output = guarded(out_bytes);
        void *scratch = guarded(QATC_MODEL_SCRATCH_BYTES);
        memcpy(input, all, in_bytes);
        if (codes) {
#ifdef QATC_MODEL_RUN_U8
            QATC_MODEL_RUN_U8(input, output, batch, scratch);
#else
            fprintf(stderr, "the model has no u8 entry\n");
            return 2;
#endif
        } else {
            QATC_MODEL_RUN(input, output, batch, scratch);
        }
        if (fwrite(output, 1, out_bytes, g) != out_bytes) {
            perror(argv[2]);
            return 2;
        }
    }
    fclose(g);
    return 0;
}
