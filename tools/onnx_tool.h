/* tools/onnx_tool.h - `kiln onnx info|run|test` (tools/onnx_tool.c). */
#ifndef KILN_TOOLS_ONNX_TOOL_H
#define KILN_TOOLS_ONNX_TOOL_H

/* argv holds the arguments after "onnx". Returns the process exit status. */
int kiln_cmd_onnx(int argc, char **argv);

#endif
