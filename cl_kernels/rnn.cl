/* cl_kernels/rnn.cl - the fused step kernels of the recurrent layers (src/ops/rnn.c).
 *
 * One layer and direction runs, per time step s, one recurrent GEMM (gh = h_prev W_hh^T,
 * on the host side) and then one of these kernels over [H / RNN_VW, B] work-items (hidden
 * units j .. j + RNN_VW - 1, batch row b; a 2-D launch needs no division to find them):
 * all gate nonlinearities and the state update of step s. The input projection
 * xg = x W_ih^T of all steps is one GEMM before the loop. Offsets (in floats) name the
 * step's rows inside whole buffers, so no step needs a tensor of its own:
 *   xg   [B, G*H] rows of step s (G = 4 for LSTM, 3 for GRU, 1 for RNN)
 *   gh   [B, G*H] W_hh h_prev of this step
 *   hs   states: h_prev at hp, the new state at hn, [B, H] each; cs the same for LSTM cells
 *   gate [B, 4H] saved activations (LSTM i f g o; GRU r z n and W_hn h_prev + b_hn)
 *   y    the layer's output row of step s: element (b, j) at y + b * yld + j
 * With lengths, a sequence b is active at step s while s < len[b]; an inactive step keeps
 * its state, writes a zero output and (backward) passes the state gradients through.
 * Every pointer is restrict: what a kernel writes, it reads through no other pointer (the
 * previous and the next state slot of hs and cs come as two pointers into one buffer).
 *
 * The backward kernels take the step's output gradient (dy) and the running state
 * gradients dh (and dc), [B, H], in place: they write the gate gradients of step s (da,
 * and for GRU the hidden side dah, whose n part is scaled by r) and leave in dh the part
 * of h_prev's gradient that does not go through W_hh (0 for LSTM and RNN, dh * z for GRU);
 * the host then adds da W_hh into dh with one GEMM.
 */

/* RNN_VW (build option, src/ops/rnn.c): hidden units per work-item, as one vector (1 on
 * GPUs; on CPUs the widest float vector of the device that divides H). POCL did not
 * vectorise the work-item loops of these kernels by itself (LLVM could not prove the
 * loads and stores independent), so each work-item computes a vector of units; every lane
 * is the scalar kernel's value, bit for bit. RT is that vector, RLD and RST load and store
 * one at p. */
#ifndef RNN_VW
#define RNN_VW 1
#endif
#if RNN_VW == 1
#define RT float
#define RLD(p) (*(p))
#define RST(p, v) (*(p) = (v))
#else
#define RCAT_(a, b) a##b
#define RCAT(a, b) RCAT_(a, b)
#define RT RCAT(float, RNN_VW)
#define RLD(p) RCAT(vload, RNN_VW)(0, p)
#define RST(p, v) RCAT(vstore, RNN_VW)(v, 0, p)
#endif

/* The gates' sigmoid and tanh from kiln_exp_neg (common.cl), of -|x| only: straight-line
 * code, where POCL's exp is a scalar library call (with it lstm_fwd was a fifth of the
 * reference LSTM's step on one core, README.md "Speed").
 * sigmoid: 1 / (1 + e) for x >= 0 and e / (1 + e) for x < 0, e = exp(-|x|): the same
 * value, with e <= 1 either way (0 below -87.3, where the true value is subnormal). */
inline RT rnn_sigmoid(RT x) {
    RT e = kiln_exp_neg(-fabs(x));
    return select(e, (RT)(1.0f), x >= (RT)(0.0f)) / (1.0f + e);
}
/* tanh from one exp instead of POCL's tanh library call: sign(x) (1 - e) / (1 + e),
 * e = exp(-2|x|). The absolute error stays within a few 2^-24 (the cancellation in 1 - e
 * for small |x| costs relative, not absolute, accuracy), it reaches +-1 exactly for large
 * |x| (e underflows), and NaN passes through. */
inline RT rnn_tanh(RT x) {
    RT e = kiln_exp_neg(-2.0f * fabs(x));
    return copysign((1.0f - e) / (1.0f + e), x);
}

inline bool rnn_active(global const int *len, int loff, int has_len, int b, int s) {
    return !has_len || s < len[loff + b];
}

/* ---- forward ---------------------------------------------------------------------------- */

kernel void lstm_fwd(int B, int H, int s, global const float *restrict xg, int xoff, global const float *restrict gh,
                     int ghoff, int has_bias, global const float *restrict bih, int bioff,
                     global const float *restrict bhh, int bhoff, int has_len, global const int *restrict len, int loff,
                     global const float *restrict hsp, int hp, global float *restrict hsn, int hn,
                     global const float *restrict csp, int cp, global float *restrict csn, int cn, int save,
                     global float *restrict gate, int goff, global float *restrict y, int yoff, int yld) {
    int j = get_global_id(0) * RNN_VW, b = get_global_id(1);
    if (j >= H || b >= B) return;
    int i = b * H + j, G = 4 * H;
    /* an inactive step selects the old state: straight-line code for the work-item loop */
    bool act = rnn_active(len, loff, has_len, b, s);
    RT a[4];
    for (int q = 0; q < 4; q++) {
        int c = q * H + j;
        a[q] = RLD(xg + xoff + b * G + c) + RLD(gh + ghoff + b * G + c);
        if (has_bias) a[q] += RLD(bih + bioff + c) + RLD(bhh + bhoff + c);
    }
    RT ig = rnn_sigmoid(a[0]), fg = rnn_sigmoid(a[1]), gg = rnn_tanh(a[2]), og = rnn_sigmoid(a[3]);
    RT c0 = RLD(csp + cp + i), h0 = RLD(hsp + hp + i);
    RT c1 = fg * c0 + ig * gg;
    RT h1 = og * rnn_tanh(c1);
    RST(csn + cn + i, act ? c1 : c0);
    RST(hsn + hn + i, act ? h1 : h0);
    RST(y + yoff + b * yld + j, act ? h1 : (RT)(0.0f));
    if (save) {
        RST(gate + goff + b * G + j, act ? ig : (RT)(0.0f));
        RST(gate + goff + b * G + H + j, act ? fg : (RT)(0.0f));
        RST(gate + goff + b * G + 2 * H + j, act ? gg : (RT)(0.0f));
        RST(gate + goff + b * G + 3 * H + j, act ? og : (RT)(0.0f));
    }
}

kernel void gru_fwd(int B, int H, int s, global const float *restrict xg, int xoff, global const float *restrict gh,
                    int ghoff, int has_bias, global const float *restrict bih, int bioff,
                    global const float *restrict bhh, int bhoff, int has_len, global const int *restrict len, int loff,
                    global const float *restrict hsp, int hp, global float *restrict hsn, int hn, int save,
                    global float *restrict gate, int goff, global float *restrict y, int yoff, int yld) {
    int j = get_global_id(0) * RNN_VW, b = get_global_id(1);
    if (j >= H || b >= B) return;
    int i = b * H + j, G = 3 * H, GW = 4 * H;
    if (!rnn_active(len, loff, has_len, b, s)) {
        RST(hsn + hn + i, RLD(hsp + hp + i));
        RST(y + yoff + b * yld + j, (RT)(0.0f));
        if (save) {
            for (int q = 0; q < 4; q++) RST(gate + goff + b * GW + q * H + j, (RT)(0.0f));
        }
        return;
    }
    int x0 = xoff + b * G, h0 = ghoff + b * G;
    RT xr = RLD(xg + x0 + j), xz = RLD(xg + x0 + H + j), xn = RLD(xg + x0 + 2 * H + j);
    RT hr = RLD(gh + h0 + j), hz = RLD(gh + h0 + H + j), hnn = RLD(gh + h0 + 2 * H + j);
    if (has_bias) {
        xr += RLD(bih + bioff + j) + RLD(bhh + bhoff + j);
        xz += RLD(bih + bioff + H + j) + RLD(bhh + bhoff + H + j);
        xn += RLD(bih + bioff + 2 * H + j);
        hnn += RLD(bhh + bhoff + 2 * H + j);
    }
    RT r = rnn_sigmoid(xr + hr), z = rnn_sigmoid(xz + hz);
    RT n = rnn_tanh(xn + r * hnn);
    RT h = (1.0f - z) * n + z * RLD(hsp + hp + i);
    RST(hsn + hn + i, h);
    RST(y + yoff + b * yld + j, h);
    if (save) {
        RST(gate + goff + b * GW + j, r);
        RST(gate + goff + b * GW + H + j, z);
        RST(gate + goff + b * GW + 2 * H + j, n);
        RST(gate + goff + b * GW + 3 * H + j, hnn);
    }
}

/* relu: 0 tanh, 1 relu */
kernel void rnn_fwd(int B, int H, int s, global const float *restrict xg, int xoff, global const float *restrict gh,
                    int ghoff, int has_bias, global const float *restrict bih, int bioff,
                    global const float *restrict bhh, int bhoff, int has_len, global const int *restrict len, int loff,
                    global const float *restrict hsp, int hp, global float *restrict hsn, int hn, int relu,
                    global float *restrict y, int yoff, int yld) {
    int j = get_global_id(0) * RNN_VW, b = get_global_id(1);
    if (j >= H || b >= B) return;
    int i = b * H + j;
    if (!rnn_active(len, loff, has_len, b, s)) {
        RST(hsn + hn + i, RLD(hsp + hp + i));
        RST(y + yoff + b * yld + j, (RT)(0.0f));
        return;
    }
    RT a = RLD(xg + xoff + b * H + j) + RLD(gh + ghoff + b * H + j);
    if (has_bias) a += RLD(bih + bioff + j) + RLD(bhh + bhoff + j);
    RT h = relu ? fmax(a, 0.0f) : rnn_tanh(a);
    RST(hsn + hn + i, h);
    RST(y + yoff + b * yld + j, h);
}

/* ---- backward --------------------------------------------------------------------------- */

kernel void lstm_bwd(int B, int H, int s, int has_len, global const int *restrict len, int loff,
                     global const float *restrict gate, int goff, global const float *restrict cs, int cp, int cn,
                     global const float *restrict dy, int dyoff, int dyld, global float *restrict dh, int dhoff,
                     global float *restrict dc, int dcoff, global float *restrict da, int daoff) {
    int j = get_global_id(0) * RNN_VW, b = get_global_id(1);
    if (j >= H || b >= B) return;
    int i = b * H + j, G = 4 * H;
    int g0 = goff + b * G, a0 = daoff + b * G;
    if (!rnn_active(len, loff, has_len, b, s)) {
        for (int q = 0; q < 4; q++) RST(da + a0 + q * H + j, (RT)(0.0f));
        return;
    }
    RT ig = RLD(gate + g0 + j), fg = RLD(gate + g0 + H + j), gg = RLD(gate + g0 + 2 * H + j),
       og = RLD(gate + g0 + 3 * H + j);
    RT c = RLD(cs + cn + i), tc = rnn_tanh(c);
    RT g = RLD(dh + dhoff + i) + RLD(dy + dyoff + b * dyld + j);
    RT dct = RLD(dc + dcoff + i) + g * og * (1.0f - tc * tc);
    RST(da + a0 + j, dct * gg * ig * (1.0f - ig));
    RST(da + a0 + H + j, dct * RLD(cs + cp + i) * fg * (1.0f - fg));
    RST(da + a0 + 2 * H + j, dct * ig * (1.0f - gg * gg));
    RST(da + a0 + 3 * H + j, g * tc * og * (1.0f - og));
    RST(dc + dcoff + i, dct * fg);
    RST(dh + dhoff + i, (RT)(0.0f));
}

/* da: the input side [B, 3H] (r z n); dah: the hidden side (r z, n times r) */
kernel void gru_bwd(int B, int H, int s, int has_len, global const int *restrict len, int loff,
                    global const float *restrict gate, int goff, global const float *restrict hs, int hp,
                    global const float *restrict dy, int dyoff, int dyld, global float *restrict dh, int dhoff,
                    global float *restrict da, global float *restrict dah, int daoff) {
    int j = get_global_id(0) * RNN_VW, b = get_global_id(1);
    if (j >= H || b >= B) return;
    int i = b * H + j, G = 3 * H, GW = 4 * H;
    int g0 = goff + b * GW, a0 = daoff + b * G;
    if (!rnn_active(len, loff, has_len, b, s)) {
        for (int q = 0; q < 3; q++) {
            RST(da + a0 + q * H + j, (RT)(0.0f));
            RST(dah + a0 + q * H + j, (RT)(0.0f));
        }
        return;
    }
    RT r = RLD(gate + g0 + j), z = RLD(gate + g0 + H + j), n = RLD(gate + g0 + 2 * H + j),
       hnn = RLD(gate + g0 + 3 * H + j);
    RT g = RLD(dh + dhoff + i) + RLD(dy + dyoff + b * dyld + j);
    RT dan = g * (1.0f - z) * (1.0f - n * n);
    RT dar = dan * hnn * r * (1.0f - r);
    RT daz = g * (RLD(hs + hp + i) - n) * z * (1.0f - z);
    RST(da + a0 + j, dar);
    RST(da + a0 + H + j, daz);
    RST(da + a0 + 2 * H + j, dan);
    RST(dah + a0 + j, dar);
    RST(dah + a0 + H + j, daz);
    RST(dah + a0 + 2 * H + j, dan * r);
    RST(dh + dhoff + i, g * z);
}

kernel void rnn_bwd(int B, int H, int s, int has_len, global const int *restrict len, int loff,
                    global const float *restrict hs, int hn, int relu, global const float *restrict dy, int dyoff,
                    int dyld, global float *restrict dh, int dhoff, global float *restrict da, int daoff) {
    int j = get_global_id(0) * RNN_VW, b = get_global_id(1);
    if (j >= H || b >= B) return;
    int i = b * H + j;
    if (!rnn_active(len, loff, has_len, b, s)) {
        RST(da + daoff + i, (RT)(0.0f));
        return;
    }
    RT h = RLD(hs + hn + i);
    RT g = RLD(dh + dhoff + i) + RLD(dy + dyoff + b * dyld + j);
    RST(da + daoff + i, relu ? select((RT)(0.0f), g, h > (RT)(0.0f)) : g * (1.0f - h * h));
    RST(dh + dhoff + i, (RT)(0.0f));
}
