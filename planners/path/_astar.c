/* A* / weighted A* / Dijkstra on a 2-D occupancy grid (the native core of
 * planners/path/grid.py, loaded with ctypes; see planners/path/_native.py).
 *
 * Grid: occ[H*W] uint8, nonzero = occupied, row-major. Moves: 4- or 8-connected,
 * straight step cost 1, diagonal sqrt(2). With corner_cut == 0 a diagonal step needs
 * both orthogonal neighbours free. Heuristic: octile (8) or Manhattan (4) distance,
 * times `weight` (0 = Dijkstra). goal < 0 runs Dijkstra to every reachable cell.
 *
 * Open list: a 4-ary heap with lazy deletion; ties on f are broken toward larger g
 * (deeper nodes), which expands far fewer cells on open grids.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int64_t key; /* f quantised to 2^-24: sums of 1s and sqrt(2)s that are equal in exact
                    arithmetic but differ in the last bits of a double compare equal, so the
                    tie-break toward larger g works (it saves most expansions on open grids) */
    float g; /* tie-break only; the exact cost-to-come lives in g[] */
    int32_t idx;
} node_t; /* 16 bytes */

#define KEY_SCALE 16777216.0
/* f >= 0 always, so adding 0.5 and truncating rounds to nearest (llround is a libm call) */
#define KEY(f) ((int64_t)((f) * KEY_SCALE + 0.5))

typedef struct {
    node_t *data;
    int64_t size;
    int64_t cap;
} heap_t;

static int before(const node_t *a, const node_t *b) {
    if (a->key != b->key) return a->key < b->key;
    return a->g > b->g;
}

static int heap_push(heap_t *h, double f, double g, int32_t idx) {
    if (h->size == h->cap) {
        int64_t cap = h->cap ? h->cap * 2 : 1024;
        node_t *d = (node_t *)realloc(h->data, (size_t)cap * sizeof(node_t));
        if (!d) return -1;
        h->data = d;
        h->cap = cap;
    }
    int64_t i = h->size++;
    node_t n = {KEY(f), (float)g, idx};
    while (i > 0) {
        int64_t p = (i - 1) >> 2; /* a 4-ary heap: shallower, and children share a line */
        if (!before(&n, &h->data[p])) break;
        h->data[i] = h->data[p];
        i = p;
    }
    h->data[i] = n;
    return 0;
}

static node_t heap_pop(heap_t *h) {
    node_t top = h->data[0];
    node_t last = h->data[--h->size];
    int64_t i = 0, n = h->size;
    for (;;) {
        int64_t l = 4 * i + 1;
        if (l >= n) break;
        int64_t c = l;
        int64_t end = l + 4 < n ? l + 4 : n;
        for (int64_t k = l + 1; k < end; ++k)
            if (before(&h->data[k], &h->data[c])) c = k;
        if (!before(&h->data[c], &last)) break;
        h->data[i] = h->data[c];
        i = c;
    }
    if (n > 0) h->data[i] = last;
    return top;
}

static const int DR[8] = {-1, 1, 0, 0, -1, -1, 1, 1};
static const int DC[8] = {0, 0, -1, 1, -1, 1, -1, 1};

/* Returns 1 when the goal was reached (or goal < 0), 0 when unreachable, -1 on
 * allocation failure. g[H*W] receives the cost-to-come (INFINITY when unreached),
 * parent[H*W] the predecessor index (-1 for none), *expanded the number of cells
 * closed. */
int wp_astar(const uint8_t *occ, int32_t H, int32_t W, int32_t start, int32_t goal,
             int32_t conn, double weight, int32_t corner_cut, double *g, int32_t *parent,
             int64_t *expanded) {
    const int64_t n = (int64_t)H * (int64_t)W;
    const int64_t WP = (int64_t)W + 2; /* padded width */
    const double SQRT2 = 1.4142135623730951;
    const double OCT = SQRT2 - 2.0;
    /* st: the grid padded by a border of walls; bit 0 = occupied, bit 1 = closed. One
     * load per neighbour answers both questions and no bounds checks are needed. */
    uint8_t *st = (uint8_t *)malloc((size_t)((H + 2) * WP));
    int32_t *stack = (int32_t *)malloc((size_t)n * sizeof(int32_t));
    if (!st || !stack) {
        free(st);
        free(stack);
        return -1;
    }
    memset(st, 1, (size_t)WP);
    memset(st + (int64_t)(H + 1) * WP, 1, (size_t)WP);
    for (int32_t r = 0; r < H; ++r) {
        uint8_t *row = st + (int64_t)(r + 1) * WP;
        row[0] = 1;
        row[W + 1] = 1;
        const uint8_t *src = occ + (int64_t)r * W;
        for (int32_t c = 0; c < W; ++c) row[c + 1] = src[c] ? 1 : 0;
    }
    for (int64_t i = 0; i < n; ++i) {
        g[i] = INFINITY;
        parent[i] = -1;
    }
    int64_t dp[8], du[8];
    for (int k = 0; k < 8; ++k) {
        dp[k] = DR[k] * WP + DC[k];
        du[k] = (int64_t)DR[k] * W + DC[k];
    }
    const int32_t gr = goal >= 0 ? goal / W : 0, gc = goal >= 0 ? goal % W : 0;
    const int use_h = goal >= 0 && weight > 0.0;
    heap_t heap = {NULL, 0, 0};
    int found = goal < 0 ? 1 : 0;
    int64_t count = 0;
    g[start] = 0.0;
    double h0 = 0.0;
    if (use_h) {
        int32_t dr = abs(start / W - gr), dc = abs(start % W - gc);
        h0 = conn == 8 ? (dr + dc) + OCT * (dr < dc ? dr : dc) : (double)(dr + dc);
        h0 *= weight;
    }
    /* Children whose key equals the key just popped are the heap's minimum too: they go on
     * a LIFO stack that is emptied before the heap (no heap traffic on open stretches). */
    int64_t top = 0;
    int64_t cur_key = 0;
    if (heap_push(&heap, h0, 0.0, start) < 0) {
        free(stack);
        free(st);
        return -1;
    }
    while (top > 0 || heap.size > 0) {
        int32_t u;
        if (top > 0) {
            u = stack[--top];
        } else {
            node_t cur = heap_pop(&heap);
            u = cur.idx;
            cur_key = cur.key;
        }
        const int32_t r = u / W, c = u % W;
        const int64_t up = (int64_t)(r + 1) * WP + (c + 1);
        if (st[up] & 2) continue; /* a stale entry: u was closed through a cheaper one */
        st[up] |= 2;
        ++count;
        if (u == goal) {
            found = 1;
            break;
        }
        const double gu = g[u];
        for (int k = 0; k < conn; ++k) {
            const int64_t vp = up + dp[k];
            if (st[vp]) continue; /* occupied, border or closed */
            double step = 1.0;
            if (k >= 4) {
                if (!corner_cut && ((st[up + DR[k] * WP] | st[up + DC[k]]) & 1)) continue;
                step = SQRT2;
            }
            const int32_t v = (int32_t)(u + du[k]);
            const double ng = gu + step;
            if (ng < g[v]) {
                g[v] = ng;
                parent[v] = u;
                double h = 0.0;
                if (use_h) {
                    int32_t dr = abs(r + DR[k] - gr), dc = abs(c + DC[k] - gc);
                    h = conn == 8 ? (dr + dc) + OCT * (dr < dc ? dr : dc) : (double)(dr + dc);
                    h *= weight;
                }
                if (KEY(ng + h) == cur_key) {
                    stack[top++] = v;
                } else if (heap_push(&heap, ng + h, ng, v) < 0) {
                    free(stack);
                    free(heap.data);
                    free(st);
                    return -1;
                }
            }
        }
    }
    free(stack);
    free(heap.data);
    free(st);
    *expanded = count;
    return found;
}
