/* Classifies MNIST test images with a model compiled ahead of time by qatc: no Rust and no qatc
 * at run time, only the object (model.o) and its header (model.h). See the Makefile.
 *
 *     ./classify IMAGES.idx LABELS.idx
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

/* Reads a whole IDX file with `dims` dimensions; returns its data, sets *count and *size (the
 * product of the other dimensions). */
static uint8_t *read_idx(const char *path, int dims, long *count, long *size) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return NULL;
    }
    uint8_t header[4];
    if (fread(header, 1, 4, f) != 4 || header[0] || header[1] || header[2] != 8 || header[3] != dims) {
        fprintf(stderr, "%s: not an IDX file of %d-dimensional bytes\n", path, dims);
        fclose(f);
        return NULL;
    }
    long n[3] = {1, 1, 1};
    for (int i = 0; i < dims; i++) {
        uint8_t b[4];
        if (fread(b, 1, 4, f) != 4) {
            fprintf(stderr, "%s: truncated header\n", path);
            fclose(f);
            return NULL;
        }
        n[i] = ((long)b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3];
    }
    *count = n[0];
    *size = n[1] * n[2];
    uint8_t *data = (uint8_t *)malloc(*count * *size);
    if (!data || fread(data, 1, *count * *size, f) != (size_t)(*count * *size)) {
        fprintf(stderr, "%s: truncated data\n", path);
        fclose(f);
        free(data);
        return NULL;
    }
    fclose(f);
    return data;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s IMAGES.idx LABELS.idx\n", argv[0]);
        return 2;
    }
    long n, size, n_labels, one;
    uint8_t *pixels = read_idx(argv[1], 3, &n, &size);
    uint8_t *labels = read_idx(argv[2], 1, &n_labels, &one);
    if (!pixels || !labels) return 2;
    if (size != QATC_MODEL_INPUT_SIZE || n != n_labels) {
        fprintf(stderr, "expected images of %d pixels with one label each\n", QATC_MODEL_INPUT_SIZE);
        return 2;
    }

    /* Normalize as in training: (p / 255 - mean) / std, written as qatc computes it. */
    float *input = (float *)malloc(n * size * sizeof(float));
    long plane = size / QATC_MODEL_NORM_CHANNELS;
    for (long i = 0; i < n * size; i++) {
        int c = (int)((i % size) / plane);
        float scale = 1.0f / (255.0f * QATC_MODEL_STD[c]);
        float shift = -QATC_MODEL_MEAN[c] / QATC_MODEL_STD[c];
        input[i] = (float)pixels[i] * scale + shift;
    }

    float *logits = (float *)malloc(n * QATC_MODEL_OUTPUT_SIZE * sizeof(float));
    uint8_t *scratch = (uint8_t *)malloc(QATC_MODEL_SCRATCH_BYTES);
    QATC_MODEL_RUN(input, logits, n, scratch);

    long correct = 0;
    for (long i = 0; i < n; i++) {
        const float *row = logits + i * QATC_MODEL_OUTPUT_SIZE;
        int best = 0;
        for (int k = 1; k < QATC_MODEL_OUTPUT_SIZE; k++)
            if (row[k] > row[best]) best = k;
        correct += best == labels[i];
    }
    printf("int8 accuracy on %ld images: %.2f %%\n", n, 100.0 * correct / n);
    free(input);
    free(logits);
    free(scratch);
    free(pixels);
    free(labels);
    return 0;
}
