/* Test harness for qatc objects: runs the model on the float32 file argv[1] (samples one after
 * another) and writes the outputs to argv[2]; with a third argument `u8`, runs the u8 entry on
 * the codes in argv[1] and writes codes. Built by tests/aot.rs with -include <the model's
 * header>, whose generic names it uses. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: %s INPUT OUTPUT [u8]\n", argv[0]);
        return 2;
    }
    int codes = argc == 4;
    size_t elem = codes ? 1 : sizeof(float);
    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    fseek(f, 0, SEEK_END);
    long bytes = ftell(f);
    fseek(f, 0, SEEK_SET);
    int64_t batch = bytes / (long)elem / QATC_MODEL_INPUT_SIZE;
    void *input = malloc(bytes);
    void *output = malloc(batch * QATC_MODEL_OUTPUT_SIZE * elem);
    uint8_t *scratch = malloc(QATC_MODEL_SCRATCH_BYTES);
    if (!input || !output || !scratch || fread(input, 1, bytes, f) != (size_t)bytes) {
        fprintf(stderr, "cannot read %s\n", argv[1]);
        return 2;
    }
    fclose(f);
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
    FILE *g = fopen(argv[2], "wb");
    if (!g || fwrite(output, elem, batch * QATC_MODEL_OUTPUT_SIZE, g) != (size_t)(batch * QATC_MODEL_OUTPUT_SIZE)) {
        perror(argv[2]);
        return 2;
    }
    fclose(g);
    return 0;
}
