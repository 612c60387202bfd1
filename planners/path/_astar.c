/* A* / weighted A* / Dijkstra on a 2-D occupancy grid (the native core of
 * planners/path/grid.py, loaded with ctypes; see planners/path/_native.py).
 *
 * Grid: occ[H*W] uint8, nonzero = occupied, row-major. Moves: 4- or 8-connected,
 * straight step cost 1, diagonal sqrt(2). With corner_cut == 0 a diagonal step needs
 * both orthogonal neighbours free. Heuristic: octile (8) or Manhattan (4) distance,
 * times `weight` (0 = Dijkstra). goal < 0 runs Dijkstra to every reachable cell.
 *
 * Open list: a radix heap over f quantised to integers, with lazy deletion; children
 * whose key equals the key being expanded skip it and go on a LIFO stack (depth first
 * among ties, which expands far fewer cells on open grids).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define KEY_SCALE 16777216.0
/* f >= 0 always, so adding 0.5 and truncating rounds to nearest (llround is a libm call).
 * f is quantised to 2^-24 so that sums of 1s and sqrt(2)s that are equal in exact
 * arithmetic but differ in the last bits of a double compare equal. */
#define KEY(f) ((int64_t)((f) * KEY_SCALE + 0.5))

/* A radix heap (Ahuja et al. 1990) over the integer keys: exact and amortised O(1) per
 * operation for monotone keys (every key pushed >= the last key popped), which A* with a
 * consistent heuristic produces; a key below the last popped one (weighted A*, rounding)
 * is clamped up to it, i.e. expanded next, as the minimum it is. Ties are not ordered. */
typedef struct {
    int64_t key;
    int32_t idx;
} item_t;

typedef struct {
    item_t *data[65];
    int64_t size[65];
    int64_t cap[65];
    int64_t last;
    int64_t count;
} radix_t;

static int radix_bucket(int64_t key, int64_t last) {
    uint64_t x = (uint64_t)key ^ (uint64_t)last;
    if (x == 0) return 0;
#if defined(__GNUC__) || defined(__clang__)
    return 64 - __builtin_clzll(x);
#else
    int b = 0;
    while (x) {
        x >>= 1;
        ++b;
    }
    return b;
#endif
}

static int radix_put(radix_t *q, int b, item_t it) {
    if (q->size[b] == q->cap[b]) {
        int64_t cap = q->cap[b] ? q->cap[b] * 2 : 256;
        item_t *d = (item_t *)realloc(q->data[b], (size_t)cap * sizeof(item_t));
        if (!d) return -1;
        q->data[b] = d;
        q->cap[b] = cap;
    }
    q->data[b][q->size[b]++] = it;
    return 0;
}

static int radix_push(radix_t *q, int64_t key, int32_t idx) {
    if (key < q->last) key = q->last;
    item_t it = {key, idx};
    ++q->count;
    return radix_put(q, radix_bucket(key, q->last), it);
}

/* Pops an item with the smallest key (q->count > 0); returns -1 on allocation failure. */
static int radix_pop(radix_t *q, item_t *out) {
    if (q->size[0] == 0) {
        int b = 1;
        while (q->size[b] == 0) ++b;
        item_t *d = q->data[b];
        int64_t n = q->size[b];
        int64_t m = d[0].key;
        for (int64_t i = 1; i < n; ++i)
            if (d[i].key < m) m = d[i].key;
        q->last = m;
        q->size[b] = 0;
        for (int64_t i = 0; i < n; ++i)
            if (radix_put(q, radix_bucket(d[i].key, m), d[i]) < 0) return -1;
    }
    *out = q->data[0][--q->size[0]];
    --q->count;
    return 0;
}

static void radix_free(radix_t *q) {
    for (int b = 0; b < 65; ++b) free(q->data[b]);
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
    int64_t stack_cap = n > 1024 ? n : 1024;
    int32_t *stack = (int32_t *)malloc((size_t)stack_cap * sizeof(int32_t));
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
    radix_t heap;
    memset(&heap, 0, sizeof(heap));
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
    if (radix_push(&heap, KEY(h0), start) < 0) {
        free(stack);
        free(st);
        radix_free(&heap);
        return -1;
    }
    while (top > 0 || heap.count > 0) {
        int32_t u;
        if (top > 0) {
            u = stack[--top];
        } else {
            item_t cur;
            if (radix_pop(&heap, &cur) < 0) {
                free(stack);
                free(st);
                radix_free(&heap);
                return -1;
            }
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
                const int64_t key = KEY(ng + h);
                if (key <= cur_key) { /* a minimum already: expand it next */
                    if (top == stack_cap) { /* only weighted A* can get here */
                        int32_t *grown = (int32_t *)realloc(stack, (size_t)(2 * stack_cap) *
                                                                       sizeof(int32_t));
                        if (!grown) {
                            free(stack);
                            radix_free(&heap);
                            free(st);
                            return -1;
                        }
                        stack = grown;
                        stack_cap *= 2;
                    }
                    stack[top++] = v;
                } else if (radix_push(&heap, key, v) < 0) {
                    free(stack);
                    radix_free(&heap);
                    free(st);
                    return -1;
                }
            }
        }
    }
    free(stack);
    radix_free(&heap);
    free(st);
    *expanded = count;
    return found;
}

/* Follows parent[] from goal back to start into out[] (goal first); returns the number
 * of cells written, or -1 if the chain is longer than cap or broken. */
int64_t wp_trace(const int32_t *parent, int32_t start, int32_t goal, int32_t *out,
                 int64_t cap) {
    int64_t k = 0;
    int32_t node = goal;
    while (k < cap) {
        out[k++] = node;
        if (node == start) return k;
        node = parent[node];
        if (node < 0) return -1;
    }
    return -1;
}
