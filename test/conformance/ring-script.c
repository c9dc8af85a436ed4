/*
 * Runs a ring script on a blkif ring through Xen's own io/ring.h macros, then
 * writes the shared ring's bytes, so that test/conformance.test.ts can run the
 * same script through pvio's FrontRing/BackRing and compare the two byte for byte
 * (and decision for decision).
 *
 * usage: ring-script SCRIPT OUT
 *
 * SCRIPT is text, one command per line:
 *   pages P      first line: the ring is P pages (1..16), one extent
 *   start S      second line: the u32 index the ring starts at (0 = a fresh ring)
 *   push K       front: produce K requests, then RING_PUSH_REQUESTS_AND_CHECK_NOTIFY
 *   reqevent X   as a backend would: sring->req_event = S + X
 *   consume K    back: RING_COPY_REQUEST the next K requests (K <= unconsumed)
 *   respond K    back: answer the K oldest unanswered requests, then
 *                RING_PUSH_RESPONSES_AND_CHECK_NOTIFY
 *   rspevent X   as a frontend would: sring->rsp_event = S + X
 *   take K       front: RING_COPY_RESPONSE the next K responses (K <= unconsumed)
 *   finalreq     back: RING_FINAL_CHECK_FOR_REQUESTS
 *   finalrsp     front: RING_FINAL_CHECK_FOR_RESPONSES
 *
 * stdout, one line per decision the macros make:
 *   push <notify 0|1>   respond <notify 0|1>   consume <unconsumed requests>
 *   take <unconsumed responses> <id of each response taken>...
 *   finalreq <work 0|1>   finalrsp <work 0|1>
 * and last "indices <req_prod_pvt> <rsp_cons> <req_cons> <rsp_prod_pvt>".
 * OUT receives the P pages of the ring.
 *
 * Before initialisation every byte i of the extent is (i * 7 + 3) & 0xff, so the
 * comparison also shows which bytes each side leaves untouched. Request fields come
 * from a counter n (0, 1, 2... over the whole script) and response statuses from a
 * counter m, by the formulas in request_fields()/response_status(), which the test
 * repeats in TypeScript.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define __XEN_INTERFACE_VERSION__ __XEN_LATEST_INTERFACE_VERSION__
/* From interface 0x00030208 on, ring.h leaves the barriers to the includer. */
#define xen_mb()  __sync_synchronize()
#define xen_rmb() __sync_synchronize()
#define xen_wmb() __sync_synchronize()
#include <xen/xen.h>
#include <xen/io/ring.h>
#include <xen/io/blkif.h>

#define PAGE 4096
#define MAX_PAGES 16
/* Consumed but unanswered requests never exceed the ring: at most 512 entries (16 pages). */
#define MAX_PENDING 512

static _Alignas(PAGE) unsigned char extent[MAX_PAGES * PAGE];

static void die(const char *what, const char *line)
{
    fprintf(stderr, "ring-script: %s: %s\n", what, line);
    exit(2);
}

/* Request number n, deterministically. Kept in step with conformance.test.ts. */
static void request_fields(uint32_t n, struct blkif_request *req)
{
    memset(req, 0, sizeof(*req));
    req->operation = (n & 1) ? BLKIF_OP_WRITE : BLKIF_OP_READ;
    req->nr_segments = n % 12;
    req->handle = (uint16_t)(n * 0x9e37u + 0x51u);
    req->id = (uint64_t)n * 0x100000007ull + 0x123456789ull;
    req->sector_number = 0xabcdef012345ull + (uint64_t)n * 8;
    for (unsigned i = 0; i < req->nr_segments; i++) {
        req->seg[i].gref = 0x80000000u + n * 16 + i;
        req->seg[i].first_sect = i % 8;
        req->seg[i].last_sect = (i + n) % 8;
    }
}

/* Status of response number m: OKAY, ERROR, EOPNOTSUPP in turn. */
static int16_t response_status(uint32_t m)
{
    static const int16_t st[3] = { BLKIF_RSP_OKAY, BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP };
    return st[m % 3];
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: ring-script SCRIPT OUT\n");
        return 2;
    }
    FILE *in = fopen(argv[1], "r");
    if (!in) die("cannot open script", argv[1]);

    char line[256];
    unsigned pages;
    unsigned long start_ul;
    if (!fgets(line, sizeof line, in) || sscanf(line, "pages %u", &pages) != 1 || pages < 1 || pages > MAX_PAGES)
        die("first line must be 'pages P' with P in 1..16", line);
    if (!fgets(line, sizeof line, in) || sscanf(line, "start %lu", &start_ul) != 1 || start_ul > 0xfffffffful)
        die("second line must be 'start S' with S a u32", line);
    const RING_IDX start = (RING_IDX)start_ul;
    const size_t bytes = (size_t)pages * PAGE;

    for (size_t i = 0; i < bytes; i++) extent[i] = (unsigned char)((i * 7 + 3) & 0xff);

    blkif_sring_t *sring = (blkif_sring_t *)extent;
    blkif_front_ring_t front;
    blkif_back_ring_t back;
    if (start == 0) {
        XEN_FRONT_RING_INIT(&front, sring, bytes);   /* SHARED_RING_INIT + FRONT_RING_INIT */
        BACK_RING_INIT(&back, sring, bytes);
    } else {
        /*
         * ring.h has no "initialise at index S": SHARED_RING_INIT puts the shared
         * indices at 0 and the events at 1. Moving them to S and S + 1 gives the state
         * of a ring that has carried S requests and is idle; the private indices
         * start there through the ATTACH macros.
         */
        SHARED_RING_INIT(sring);
        sring->req_prod = sring->rsp_prod = start;
        sring->req_event = sring->rsp_event = start + 1;
        FRONT_RING_ATTACH(&front, sring, start, bytes);
        BACK_RING_ATTACH(&back, sring, start, bytes);
    }

    /* Requests the back end consumed and has not answered yet (a FIFO of copies). */
    static struct blkif_request pending[MAX_PENDING];
    unsigned head = 0, tail = 0;
    uint32_t nreq = 0, nrsp = 0;

    while (fgets(line, sizeof line, in)) {
        unsigned long k;
        if (line[0] == '\n' || line[0] == '#') continue;
        if (sscanf(line, "push %lu", &k) == 1) {
            if (k > RING_FREE_REQUESTS(&front)) die("push: more requests than free slots", line);
            for (unsigned long i = 0; i < k; i++) {
                struct blkif_request req;
                request_fields(nreq++, &req);
                memcpy(RING_GET_REQUEST(&front, front.req_prod_pvt), &req, sizeof req);
                front.req_prod_pvt++;
            }
            int notify;
            RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&front, notify);
            printf("push %d\n", notify ? 1 : 0);
        } else if (sscanf(line, "reqevent %lu", &k) == 1) {
            sring->req_event = start + (RING_IDX)k;
        } else if (sscanf(line, "rspevent %lu", &k) == 1) {
            sring->rsp_event = start + (RING_IDX)k;
        } else if (sscanf(line, "consume %lu", &k) == 1) {
            unsigned int avail = RING_HAS_UNCONSUMED_REQUESTS(&back);
            if (k > avail) die("consume: more than the unconsumed requests", line);
            for (unsigned long i = 0; i < k; i++) {
                RING_COPY_REQUEST(&back, back.req_cons, &pending[tail % MAX_PENDING]);
                back.req_cons++;
                tail++;
            }
            printf("consume %u\n", avail);
        } else if (sscanf(line, "respond %lu", &k) == 1) {
            if (k > tail - head) die("respond: more than the consumed requests", line);
            for (unsigned long i = 0; i < k; i++) {
                const struct blkif_request *req = &pending[head++ % MAX_PENDING];
                struct blkif_response rsp;
                memset(&rsp, 0, sizeof rsp);   /* no stale padding (XSA-216) */
                rsp.id = req->id;
                rsp.operation = req->operation;
                rsp.status = response_status(nrsp++);
                memcpy(RING_GET_RESPONSE(&back, back.rsp_prod_pvt), &rsp, sizeof rsp);
                back.rsp_prod_pvt++;
            }
            int notify;
            RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&back, notify);
            printf("respond %d\n", notify ? 1 : 0);
        } else if (sscanf(line, "take %lu", &k) == 1) {
            unsigned int avail = RING_HAS_UNCONSUMED_RESPONSES(&front);
            if (k > avail) die("take: more than the unconsumed responses", line);
            printf("take %u", avail);
            for (unsigned long i = 0; i < k; i++) {
                struct blkif_response rsp;
                RING_COPY_RESPONSE(&front, front.rsp_cons, &rsp);
                front.rsp_cons++;
                printf(" %llu", (unsigned long long)rsp.id);
            }
            printf("\n");
        } else if (strncmp(line, "finalreq", 8) == 0) {
            int work;
            RING_FINAL_CHECK_FOR_REQUESTS(&back, work);
            printf("finalreq %d\n", work ? 1 : 0);
        } else if (strncmp(line, "finalrsp", 8) == 0) {
            int work;
            RING_FINAL_CHECK_FOR_RESPONSES(&front, work);
            printf("finalrsp %d\n", work ? 1 : 0);
        } else {
            die("unknown command", line);
        }
    }
    fclose(in);
    printf("indices %u %u %u %u\n", front.req_prod_pvt, front.rsp_cons, back.req_cons, back.rsp_prod_pvt);

    FILE *out = fopen(argv[2], "wb");
    if (!out || fwrite(extent, 1, bytes, out) != bytes || fclose(out) != 0) die("cannot write", argv[2]);
    return 0;
}
