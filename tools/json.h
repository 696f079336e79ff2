/* tools/json.h - the one JSON string writer of the kiln command line (kiln, kiln ops,
 * kiln bench, kiln tune). */
#ifndef KILN_TOOLS_JSON_H
#define KILN_TOOLS_JSON_H

/* Prints s to stdout as a JSON string: quoted, with '"', '\\' and control characters
 * escaped. A NULL s prints "". */
void tool_json_str(const char *s);

#endif
