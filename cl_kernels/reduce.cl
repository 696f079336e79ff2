/* cl_kernels/reduce.cl */
