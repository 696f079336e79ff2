/* cl_kernels/random.cl */
