/* cl_kernels/rnn.cl - the fused step kernels of the recurrent layers (src/ops/rnn.c).
 *
 * One layer and direction runs, per time step s, one recurrent GEMM (gh = h_prev W_hh^T,
 * on the host side) and then one of these kernels over [H, B] work-items (hidden unit j,
 * batch row b; a 2-D launch needs no division to find them): all gate nonlinearities and
 * the state update of step s. The input projection xg = x W_ih^T of all steps is one GEMM
 * before the loop. Offsets (in floats) name the step's rows inside whole buffers, so no
 * step needs a tensor of its own:
 *   xg   [B, G*H] rows of step s (G = 4 for LSTM, 3 for GRU, 1 for RNN)
 *   gh   [B, G*H] W_hh h_prev of this step
 *   hs   states: h_prev at hp, the new state at hn, [B, H] each; cs the same for LSTM cells
 *   gate [B, 4H] saved activations (LSTM i f g o; GRU r z n and W_hn h_prev + b_hn)
 *   y    the layer's output row of step s: element (b, j) at y + b * yld + j
 * With lengths, a sequence b is active at step s while s < len[b]; an inactive step keeps
 * its state, writes a zero output and (backward) passes the state gradients through.
 *
 * The backward kernels take the step's output gradient (dy) and the running state
 * gradients dh (and dc), [B, H], in place: they write the gate gradients of step s (da,
 * and for GRU the hidden side dah, whose n part is scaled by r) and leave in dh the part
 * of h_prev's gradient that does not go through W_hh (0 for LSTM and RNN, dh * z for GRU);
 * the host then adds da W_hh into dh with one GEMM.
 */

inline float rnn_sigmoid(float x) { return 1.0f / (1.0f + exp(-x)); }
/* tanh from one exp, the function sigmoid uses too, instead of POCL's tanh library call:
 * sign(x) (1 - e) / (1 + e), e = exp(-2|x|). The absolute error stays within a few 2^-24
 * (the cancellation in 1 - e for small |x| costs relative, not absolute, accuracy), it
 * reaches +-1 exactly for large |x| (e underflows), and NaN passes through. */
inline float rnn_tanh(float x) {
    float e = exp(-2.0f * fabs(x));
    return copysign((1.0f - e) / (1.0f + e), x);
}

inline bool rnn_active(global const int *len, int loff, int has_len, int b, int s) {
    return !has_len || s < len[loff + b];
}

/* ---- forward ---------------------------------------------------------------------------- */

kernel void lstm_fwd(int B, int H, int s, global const float *xg, int xoff, global const float *gh, int ghoff,
                     int has_bias, global const float *bih, int bioff, global const float *bhh, int bhoff, int has_len,
                     global const int *len, int loff, global float *hs, int hp, int hn, global float *cs, int cp,
                     int cn, int save, global float *gate, int goff, global float *y, int yoff, int yld) {
    int j = get_global_id(0), b = get_global_id(1);
    if (j >= H || b >= B) return;
    int i = b * H + j, G = 4 * H;
    /* an inactive step selects the old state: straight-line code for the work-item loop */
    bool act = rnn_active(len, loff, has_len, b, s);
    float a[4];
    for (int q = 0; q < 4; q++) {
        int c = q * H + j;
        a[q] = xg[xoff + b * G + c] + gh[ghoff + b * G + c];
        if (has_bias) a[q] += bih[bioff + c] + bhh[bhoff + c];
    }
    float ig = rnn_sigmoid(a[0]), fg = rnn_sigmoid(a[1]), gg = rnn_tanh(a[2]), og = rnn_sigmoid(a[3]);
    float c0 = cs[cp + i], h0 = hs[hp + i];
    float c1 = fg * c0 + ig * gg;
    float h1 = og * rnn_tanh(c1);
    cs[cn + i] = act ? c1 : c0;
    hs[hn + i] = act ? h1 : h0;
    y[yoff + b * yld + j] = act ? h1 : 0.0f;
    if (save) {
        gate[goff + b * G + j] = act ? ig : 0.0f;
        gate[goff + b * G + H + j] = act ? fg : 0.0f;
        gate[goff + b * G + 2 * H + j] = act ? gg : 0.0f;
        gate[goff + b * G + 3 * H + j] = act ? og : 0.0f;
    }
}

kernel void gru_fwd(int B, int H, int s, global const float *xg, int xoff, global const float *gh, int ghoff,
                    int has_bias, global const float *bih, int bioff, global const float *bhh, int bhoff, int has_len,
                    global const int *len, int loff, global float *hs, int hp, int hn, int save, global float *gate,
                    int goff, global float *y, int yoff, int yld) {
    int j = get_global_id(0), b = get_global_id(1);
    if (j >= H || b >= B) return;
    int i = b * H + j, G = 3 * H, GW = 4 * H;
    if (!rnn_active(len, loff, has_len, b, s)) {
        hs[hn + i] = hs[hp + i];
        y[yoff + b * yld + j] = 0.0f;
        if (save) {
            for (int q = 0; q < 4; q++) gate[goff + b * GW + q * H + j] = 0.0f;
        }
        return;
    }
    int x0 = xoff + b * G, h0 = ghoff + b * G;
    float xr = xg[x0 + j], xz = xg[x0 + H + j], xn = xg[x0 + 2 * H + j];
    float hr = gh[h0 + j], hz = gh[h0 + H + j], hnn = gh[h0 + 2 * H + j];
    if (has_bias) {
        xr += bih[bioff + j] + bhh[bhoff + j];
        xz += bih[bioff + H + j] + bhh[bhoff + H + j];
        xn += bih[bioff + 2 * H + j];
        hnn += bhh[bhoff + 2 * H + j];
    }
    float r = rnn_sigmoid(xr + hr), z = rnn_sigmoid(xz + hz);
    float n = rnn_tanh(xn + r * hnn);
    float h = (1.0f - z) * n + z * hs[hp + i];
    hs[hn + i] = h;
    y[yoff + b * yld + j] = h;
    if (save) {
        gate[goff + b * GW + j] = r;
        gate[goff + b * GW + H + j] = z;
        gate[goff + b * GW + 2 * H + j] = n;
        gate[goff + b * GW + 3 * H + j] = hnn;
    }
}

/* relu: 0 tanh, 1 relu */
kernel void rnn_fwd(int B, int H, int s, global const float *xg, int xoff, global const float *gh, int ghoff,
                    int has_bias, global const float *bih, int bioff, global const float *bhh, int bhoff, int has_len,
                    global const int *len, int loff, global float *hs, int hp, int hn, int relu, global float *y,
                    int yoff, int yld) {
    int j = get_global_id(0), b = get_global_id(1);
    if (j >= H || b >= B) return;
    int i = b * H + j;
    if (!rnn_active(len, loff, has_len, b, s)) {
        hs[hn + i] = hs[hp + i];
        y[yoff + b * yld + j] = 0.0f;
        return;
    }
    float a = xg[xoff + b * H + j] + gh[ghoff + b * H + j];
    if (has_bias) a += bih[bioff + j] + bhh[bhoff + j];
    float h = relu ? fmax(a, 0.0f) : rnn_tanh(a);
    hs[hn + i] = h;
    y[yoff + b * yld + j] = h;
}

/* ---- backward --------------------------------------------------------------------------- */

kernel void lstm_bwd(int B, int H, int s, int has_len, global const int *len, int loff, global const float *gate,
                     int goff, global const float *cs, int cp, int cn, global const float *dy, int dyoff, int dyld,
                     global float *dh, int dhoff, global float *dc, int dcoff, global float *da, int daoff) {
    int j = get_global_id(0), b = get_global_id(1);
    if (j >= H || b >= B) return;
    int i = b * H + j, G = 4 * H;
    int g0 = goff + b * G, a0 = daoff + b * G;
    if (!rnn_active(len, loff, has_len, b, s)) {
        for (int q = 0; q < 4; q++) da[a0 + q * H + j] = 0.0f;
        return;
    }
    float ig = gate[g0 + j], fg = gate[g0 + H + j], gg = gate[g0 + 2 * H + j], og = gate[g0 + 3 * H + j];
    float c = cs[cn + i], tc = rnn_tanh(c);
    float g = dh[dhoff + i] + dy[dyoff + b * dyld + j];
    float dct = dc[dcoff + i] + g * og * (1.0f - tc * tc);
    da[a0 + j] = dct * gg * ig * (1.0f - ig);
    da[a0 + H + j] = dct * cs[cp + i] * fg * (1.0f - fg);
    da[a0 + 2 * H + j] = dct * ig * (1.0f - gg * gg);
    da[a0 + 3 * H + j] = g * tc * og * (1.0f - og);
    dc[dcoff + i] = dct * fg;
    dh[dhoff + i] = 0.0f;
}

/* da: the input side [B, 3H] (r z n); dah: the hidden side (r z, n times r) */
kernel void gru_bwd(int B, int H, int s, int has_len, global const int *len, int loff, global const float *gate,
                    int goff, global const float *hs, int hp, global const float *dy, int dyoff, int dyld,
                    global float *dh, int dhoff, global float *da, global float *dah, int daoff) {
    int j = get_global_id(0), b = get_global_id(1);
    if (j >= H || b >= B) return;
    int i = b * H + j, G = 3 * H, GW = 4 * H;
    int g0 = goff + b * GW, a0 = daoff + b * G;
    if (!rnn_active(len, loff, has_len, b, s)) {
        for (int q = 0; q < 3; q++) {
            da[a0 + q * H + j] = 0.0f;
            dah[a0 + q * H + j] = 0.0f;
        }
        return;
    }
    float r = gate[g0 + j], z = gate[g0 + H + j], n = gate[g0 + 2 * H + j], hnn = gate[g0 + 3 * H + j];
    float g = dh[dhoff + i] + dy[dyoff + b * dyld + j];
    float dan = g * (1.0f - z) * (1.0f - n * n);
    float dar = dan * hnn * r * (1.0f - r);
    float daz = g * (hs[hp + i] - n) * z * (1.0f - z);
    da[a0 + j] = dar;
    da[a0 + H + j] = daz;
    da[a0 + 2 * H + j] = dan;
    dah[a0 + j] = dar;
    dah[a0 + H + j] = daz;
    dah[a0 + 2 * H + j] = dan * r;
    dh[dhoff + i] = g * z;
}

kernel void rnn_bwd(int B, int H, int s, int has_len, global const int *len, int loff, global const float *hs, int hn,
                    int relu, global const float *dy, int dyoff, int dyld, global float *dh, int dhoff,
                    global float *da, int daoff) {
    int j = get_global_id(0), b = get_global_id(1);
    if (j >= H || b >= B) return;
    int i = b * H + j;
    if (!rnn_active(len, loff, has_len, b, s)) {
        da[daoff + i] = 0.0f;
        return;
    }
    float h = hs[hn + i];
    float g = dh[dhoff + i] + dy[dyoff + b * dyld + j];
    da[daoff + i] = relu ? (h > 0.0f ? g : 0.0f) : g * (1.0f - h * h);
    dh[dhoff + i] = 0.0f;
}
