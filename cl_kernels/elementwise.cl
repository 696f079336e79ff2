/* cl_kernels/elementwise.cl */
