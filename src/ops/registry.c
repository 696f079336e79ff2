/* src/ops/registry.c - the tables of the op list (src/ops/registry.h) and their lookups. */
#include "registry.h"

#include <string.h>

static const kiln__family_info families[] = {
#define KILN__X(id, name, src, cl) [KILN__FAM_##id] = {#name, src, cl},
    KILN__FAMILIES(KILN__X)
#undef KILN__X
};
_Static_assert(sizeof families / sizeof families[0] == KILN__FAM_COUNT, "one row per op family");

static const kiln__op_info ops[] = {
#define KILN__X(id, name, fn, fam, grad, golden, tests, refs)                                                          \
    [KILN__OP_##id] = {#name, #fn, KILN__FAM_##fam, grad, golden, tests, refs},
    KILN__OPS(KILN__X)
#undef KILN__X
};
_Static_assert(sizeof ops / sizeof ops[0] == KILN__OP_COUNT, "one row per op");

const kiln__op_info *kiln__op_get(kiln__op op) { return (int)op >= 0 && op < KILN__OP_COUNT ? &ops[op] : NULL; }

const char *kiln__op_name(kiln__op op) {
    const kiln__op_info *r = kiln__op_get(op);
    return r ? r->name : "?";
}

int kiln__op_find(const char *name) {
    for (int k = 0; name && k < KILN__OP_COUNT; k++)
        if (strcmp(ops[k].name, name) == 0) return k;
    return -1;
}

const kiln__family_info *kiln__family_get(kiln__family f) {
    return (int)f >= 0 && f < KILN__FAM_COUNT ? &families[f] : NULL;
}
