/* tools/kiln.c - the kiln command line: devices, cache. */
#include <stdio.h>
#include <kiln/kiln.h>
int main(void) { return 0; }
