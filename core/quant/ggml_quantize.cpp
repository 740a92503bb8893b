// llama.cpp block encoders: reference-exact legacy formats and searched k-quants.
//
// Layout: every format is handled in two halves. The search works on an unpacked block (fp16
// super-scales as floats, integer sub-scales/mins, integer levels) and measures error with the
// decoder's own float expressions (a * level + c with a = d * sc, c = -dmin * m), so "the error
// dropped" means the stored bytes decode better. Packing into ggml's byte layout, and reading a
// weight back out of it (ggmlWeightCode, used by the teaching view and checked against
// dequantizeRow by the tests), are separate small functions per format.
//
// The reference encoders depend on exact float evaluation: this file must not be built with
// -ffast-math, nor for a target with FMA (e.g. -march=native) unless with -ffp-contract=off, or
// x * id + 8.5f may fuse into one rounding and a few blocks stop matching llama.cpp's bytes.
#include "quant/ggml_quantize.h"

#include <algorithm>
#include <array>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <string>

#include "quant/ggml_dequant.h"

namespace ql {
namespace {

constexpr int kQK = 256;

// Round to nearest, ties to even, for |v| < 2^22: adding 1.5 * 2^23 leaves the integer in the
// low mantissa bits.
inline int roundNearest(float v)
{
    const float t = v + 12582912.0f;
    std::int32_t i;
    std::memcpy(&i, &t, sizeof i);
    return i - 0x4B400000;
}

// NaN lands on lo.
inline int roundClamp(float v, int lo, int hi)
{
    float c = v > float(lo) ? v : float(lo);
    c = c < float(hi) ? c : float(hi);
    return roundNearest(c);
}

// C's float-to-integer conversion (truncation) for the reference encoders, defined for every
// input: NaN and out-of-range values, where the cast itself would be undefined, saturate.
inline int truncSat(float v, int lo, int hi)
{
    if (!(v > float(lo))) return lo;
    if (!(v < float(hi))) return hi;
    return int(v);
}

// floor / ceil of t clamped to [lo, hi] (NaN -> lo), for integer scale candidates.
inline int floorIn(double t, int lo, int hi)
{
    if (!(t > lo)) return lo;
    return t < hi ? int(std::floor(t)) : hi;
}
inline int ceilIn(double t, int lo, int hi)
{
    if (!(t > lo)) return lo;
    return t < hi ? int(std::ceil(t)) : hi;
}

inline float halfRound(float x)
{
    return fp16ToFp32(fp32ToFp16(x));
}

inline void putHalf(std::uint8_t* p, float x)
{
    const std::uint16_t h = fp32ToFp16(x);
    p[0] = std::uint8_t(h & 0xFF);
    p[1] = std::uint8_t(h >> 8);
}

inline float getHalf(const std::uint8_t* p)
{
    return fp16ToFp32(std::uint16_t(p[0] | (p[1] << 8)));
}

// ------------------------------------------------------------------ reference legacy encoders

void refQ4_0(const float* x, std::uint8_t* y)
{
    float amax = 0, max = 0;
    for (int j = 0; j < 32; ++j) {
        if (amax < std::fabs(x[j])) {
            amax = std::fabs(x[j]);
            max = x[j];
        }
    }
    const float d = max / -8;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    putHalf(y, d);
    for (int j = 0; j < 16; ++j) {
        const float x0 = x[j] * id;
        const float x1 = x[16 + j] * id;
        const int q0 = std::min(15, truncSat(x0 + 8.5f, 0, 127));
        const int q1 = std::min(15, truncSat(x1 + 8.5f, 0, 127));
        y[2 + j] = std::uint8_t(q0 | (q1 << 4));
    }
}

void refQ4_1(const float* x, std::uint8_t* y)
{
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < 32; ++j) {
        if (x[j] < min) min = x[j];
        if (x[j] > max) max = x[j];
    }
    const float d = (max - min) / 15;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    putHalf(y, d);
    putHalf(y + 2, min);
    for (int j = 0; j < 16; ++j) {
        const float x0 = (x[j] - min) * id;
        const float x1 = (x[16 + j] - min) * id;
        const int q0 = std::min(15, truncSat(x0 + 0.5f, 0, 127));
        const int q1 = std::min(15, truncSat(x1 + 0.5f, 0, 127));
        y[4 + j] = std::uint8_t(q0 | (q1 << 4));
    }
}

void packQ5High(std::uint8_t* qh, std::uint8_t* qs, const int* q)
{
    std::uint32_t bits = 0;
    for (int j = 0; j < 16; ++j) {
        qs[j] = std::uint8_t((q[j] & 0xF) | ((q[16 + j] & 0xF) << 4));
        bits |= std::uint32_t((q[j] >> 4) & 1) << j;
        bits |= std::uint32_t((q[16 + j] >> 4) & 1) << (j + 16);
    }
    for (int b = 0; b < 4; ++b) qh[b] = std::uint8_t(bits >> (8 * b));
}

void refQ5_0(const float* x, std::uint8_t* y)
{
    float amax = 0, max = 0;
    for (int j = 0; j < 32; ++j) {
        if (amax < std::fabs(x[j])) {
            amax = std::fabs(x[j]);
            max = x[j];
        }
    }
    const float d = max / -16;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    putHalf(y, d);
    int q[32];
    for (int j = 0; j < 32; ++j) q[j] = std::min(31, truncSat(x[j] * id + 16.5f, 0, 127));
    packQ5High(y + 2, y + 6, q);
}

void refQ5_1(const float* x, std::uint8_t* y)
{
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < 32; ++j) {
        if (x[j] < min) min = x[j];
        if (x[j] > max) max = x[j];
    }
    const float d = (max - min) / 31;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    putHalf(y, d);
    putHalf(y + 2, min);
    int q[32];
    for (int j = 0; j < 32; ++j) q[j] = truncSat((x[j] - min) * id + 0.5f, 0, 255);
    packQ5High(y + 4, y + 8, q);
}

void refQ8_0(const float* x, std::uint8_t* y)
{
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    putHalf(y, d);
    for (int j = 0; j < 32; ++j)
        y[2 + j] = std::uint8_t(std::int8_t(truncSat(std::round(x[j] * id), -128, 127)));
}

// ------------------------------------------------------------------ search building blocks

// Weighted squared error of x against a * l + c with l the nearest level in [lo, hi]; writes l.
// Sums run in four lanes (n is a multiple of 4): independent chains the CPU can overlap, where a
// single float accumulator would serialise on the add latency.
float subError(const float* x, const float* w, int n, float a, float c, int lo, int hi, int* L)
{
    float acc[4] = {0, 0, 0, 0};
    if (a == 0) {
        const int l0 = std::clamp(0, lo, hi);
        const float e0 = a * float(l0) + c;
        for (int i = 0; i < n; i += 4) {
            for (int k = 0; k < 4; ++k) {
                L[i + k] = l0;
                const float e = e0 - x[i + k];
                acc[k] += w[i + k] * e * e;
            }
        }
    } else {
        const float inv = 1.0f / a;
        for (int i = 0; i < n; i += 4) {
            for (int k = 0; k < 4; ++k) {
                const int l = roundClamp((x[i + k] - c) * inv, lo, hi);
                L[i + k] = l;
                const float e = a * float(l) + c - x[i + k];
                acc[k] += w[i + k] * e * e;
            }
        }
    }
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

// Continuous s with x ~ s * L, L in [lo, hi] (lo < 0 < hi), maximising (sum w x L)^2 / sum w L^2.
// Candidates send the value of largest magnitude to either end of the range (and 0.1 steps
// around it); the best is refined by rounding at the least-squares scale. Returns 0 for x == 0.
float fitSymmetric(const float* x, const float* w, int n, int lo, int hi, int* L)
{
    float amax = 0, vmax = 0;
    for (int i = 0; i < n; ++i) {
        if (std::fabs(x[i]) > amax) {
            amax = std::fabs(x[i]);
            vmax = x[i];
        }
    }
    if (!(amax > 1e-30f)) {
        std::fill(L, L + n, 0);
        return 0;
    }
    int tmp[kQK];
    float bestNum = -1, bestSxl = 0, bestSll = 0;
    auto tryInverse = [&](float iscale) {
        float sxl[4] = {0, 0, 0, 0}, sll[4] = {0, 0, 0, 0};
        for (int i = 0; i < n; i += 4) {
            for (int k = 0; k < 4; ++k) {
                const int l = roundClamp(iscale * x[i + k], lo, hi);
                tmp[i + k] = l;
                sxl[k] += w[i + k] * x[i + k] * float(l);
                sll[k] += w[i + k] * float(l * l);
            }
        }
        const float sx = (sxl[0] + sxl[1]) + (sxl[2] + sxl[3]);
        const float sl = (sll[0] + sll[1]) + (sll[2] + sll[3]);
        if (sl > 0 && sx * sx / sl > bestNum) {
            bestNum = sx * sx / sl;
            bestSxl = sx;
            bestSll = sl;
            std::copy(tmp, tmp + n, L);
            return true;
        }
        return false;
    };
    // Steps of 0.1 level; a few-level grid (Q3_K's 8) gains nothing beyond +-0.5.
    const int radius = hi - lo < 15 ? 5 : 9;
    for (int end : {lo, hi}) {
        const float mag = float(std::abs(end));
        const float sign = end < 0 ? -1.0f : 1.0f;
        for (int k = -radius; k <= radius; ++k) {
            const float t = mag + 0.1f * float(k);
            if (t <= 0.25f) continue;
            tryInverse(sign * t / vmax);
        }
    }
    for (int it = 0; it < 4 && bestSll > 0 && bestSxl != 0; ++it)
        if (!tryInverse(bestSll / bestSxl)) break;
    return bestSll > 0 ? bestSxl / bestSll : 0.0f;
}

struct LsFit {
    double a = 0, c = 0;
    bool ok = false;
};

// Level-independent weighted moments of a sub-block: sum w, sum w x, sum w x^2.
struct Moments {
    double sw = 0, sx = 0, sxx = 0;
};

Moments moments(const float* x, const float* w, int n)
{
    Moments m;
    for (int i = 0; i < n; ++i) {
        m.sw += w[i];
        m.sx += double(w[i]) * x[i];
        m.sxx += double(w[i]) * x[i] * x[i];
    }
    return m;
}

// Level moments sum w l, sum w l^2, sum w x l (float lanes; n is a multiple of 4).
struct LevelMoments {
    double sl = 0, sll = 0, sxl = 0;
};

LevelMoments levelMoments(const float* x, const float* w, int n, const int* L)
{
    float sl[4] = {0, 0, 0, 0}, sll[4] = {0, 0, 0, 0}, sxl[4] = {0, 0, 0, 0};
    for (int i = 0; i < n; i += 4) {
        for (int k = 0; k < 4; ++k) {
            const float wl = w[i + k] * float(L[i + k]);
            sl[k] += wl;
            sll[k] += wl * float(L[i + k]);
            sxl[k] += wl * x[i + k];
        }
    }
    LevelMoments m;
    m.sl = double((sl[0] + sl[1]) + (sl[2] + sl[3]));
    m.sll = double((sll[0] + sll[1]) + (sll[2] + sll[3]));
    m.sxl = double((sxl[0] + sxl[1]) + (sxl[2] + sxl[3]));
    return m;
}

// Weighted least squares x ~ a * L + c over given levels; with cNonPositive, c <= 0.
LsFit solveLine(const Moments& m, const LevelMoments& l, bool cNonPositive)
{
    LsFit f;
    const double det = m.sw * l.sll - l.sl * l.sl;
    if (det > 1e-9 * m.sw * l.sll) {
        f.a = (m.sw * l.sxl - m.sx * l.sl) / det;
        f.c = (l.sll * m.sx - l.sl * l.sxl) / det;
        f.ok = true;
    }
    if (!f.ok || (cNonPositive && f.c > 0)) {
        if (l.sll <= 0) return LsFit{};
        f.a = l.sxl / l.sll;
        f.c = 0;
        f.ok = true;
    }
    return f;
}

LsFit fitLine(const float* x, const float* w, int n, const int* L, bool cNonPositive)
{
    return solveLine(moments(x, w, n), levelMoments(x, w, n, L), cNonPositive);
}

// sum w (x - a l - c)^2 from the moments, for the levels the moments came from.
double lineError(const Moments& m, const LevelMoments& l, const LsFit& f)
{
    return m.sxx - 2 * f.a * l.sxl - 2 * f.c * m.sx + f.a * f.a * l.sll + 2 * f.a * f.c * l.sl +
           f.c * f.c * m.sw;
}

// x ~ s * L + c, L in [0, nmax]; with cNonPositive c <= 0 (k-quant mins are subtracted, >= 0).
// A sweep of candidate scales over the range, each with its least-squares (s, c) ranked by the
// closed-form error; the best is then measured exactly and refined by Lloyd steps (re-round at
// the fitted line, refit). Returns the weighted error.
float fitAffine(const float* x, const float* w, int n, int nmax, bool cNonPositive, float& s,
                float& c, int* L)
{
    float lo = x[0], hi = x[0];
    for (int i = 1; i < n; ++i) {
        lo = std::min(lo, x[i]);
        hi = std::max(hi, x[i]);
    }
    if (cNonPositive && lo > 0) lo = 0;
    if (!(hi > lo)) {
        s = 0;
        c = lo;
        return subError(x, w, n, 0, c, 0, nmax, L);
    }
    const Moments m = moments(x, w, n);
    int tmp[kQK], levels[kQK];
    s = (hi - lo) / float(nmax);
    c = lo;
    float best = subError(x, w, n, s, c, 0, nmax, L);

    // Candidate inverse scales put the range on nmax - 1 .. nmax + 1 levels in steps of 0.1
    // (Q2_K's four levels a little further); each candidate's levels get their own LS fit.
    const int steps = nmax <= 3 ? 24 : 20;
    double bestModel = 0;
    LsFit bestFit;
    for (int k = 0; k <= steps; ++k) {
        const float iscale = (float(nmax) - 1.0f + 0.1f * float(k)) / (hi - lo);
        for (int i = 0; i < n; ++i) levels[i] = roundClamp(iscale * (x[i] - lo), 0, nmax);
        const LevelMoments lm = levelMoments(x, w, n, levels);
        const LsFit f = solveLine(m, lm, cNonPositive);
        if (!f.ok || !(f.a > 0)) continue;
        const double e = lineError(m, lm, f);
        if (!bestFit.ok || e < bestModel) {
            bestModel = e;
            bestFit = f;
        }
    }
    LsFit f = bestFit;
    for (int it = 0; it < 5 && f.ok && f.a > 0; ++it) {
        const float err = subError(x, w, n, float(f.a), float(f.c), 0, nmax, tmp);
        if (!(err < best)) break;
        best = err;
        s = float(f.a);
        c = float(f.c);
        std::copy(tmp, tmp + n, L);
        f = solveLine(m, levelMoments(x, w, n, L), cNonPositive);
    }
    return best;
}

// ------------------------------------------------------------------ k-quant super-blocks

// Affine k-quants (Q2_K, Q4_K, Q5_K): value = (d * sc) * l - (dmin * m).
struct AffineLayout {
    int nsub;  // sub-blocks per 256
    int sub;   // weights per sub-block
    int nmax;  // levels 0..nmax
    int smax;  // integer sub-scales and mins 0..smax
};

struct AffineBlock {
    float d = 0, dmin = 0;  // fp16-representable
    int sc[16] = {};
    int mn[16] = {};
    int L[kQK] = {};
};

float affineSubError(const float* x, const float* w, const AffineLayout& lay, float d, float dmin,
                     int sc, int mn, int* L)
{
    return subError(x, w, lay.sub, d * float(sc), -(dmin * float(mn)), 0, lay.nmax, L);
}

float affineBlockError(const float* x, const float* w, const AffineLayout& lay, float d, float dmin,
                       const int* sc, const int* mn, int* L, float* subErr)
{
    float total = 0;
    for (int j = 0; j < lay.nsub; ++j) {
        const int o = j * lay.sub;
        subErr[j] = affineSubError(x + o, w + o, lay, d, dmin, sc[j], mn[j], L + o);
        total += subErr[j];
    }
    return total;
}

void quantizeAffineSuper(const float* x, const float* w, const AffineLayout& lay, AffineBlock& B)
{
    float s[16], m[16];
    float maxS = 0, maxM = 0;
    for (int j = 0; j < lay.nsub; ++j) {
        const int o = j * lay.sub;
        float c = 0;
        fitAffine(x + o, w + o, lay.sub, lay.nmax, true, s[j], c, B.L + o);
        m[j] = -c;
        maxS = std::max(maxS, s[j]);
        maxM = std::max(maxM, m[j]);
    }
    B.d = maxS > 0 ? halfRound(maxS / float(lay.smax)) : 0.0f;
    B.dmin = maxM > 0 ? halfRound(maxM / float(lay.smax)) : 0.0f;
    for (int j = 0; j < lay.nsub; ++j) {
        B.sc[j] = B.d > 0 ? roundClamp(s[j] / B.d, 0, lay.smax) : 0;
        B.mn[j] = B.dmin > 0 ? roundClamp(m[j] / B.dmin, 0, lay.smax) : 0;
    }
    float subErr[16];
    float total = affineBlockError(x, w, lay, B.d, B.dmin, B.sc, B.mn, B.L, subErr);

    int tmp[kQK];
    for (int round = 0; round < 3; ++round) {
        // Per sub-block: the integer pair nearest the least-squares (scale, min) for its levels.
        for (int j = 0; j < lay.nsub; ++j) {
            const int o = j * lay.sub;
            for (int it = 0; it < 3; ++it) {
                const LsFit f = fitLine(x + o, w + o, lay.sub, B.L + o, true);
                int scCand[4] = {B.sc[j], B.sc[j], B.sc[j], B.sc[j]};
                int mnCand[4] = {B.mn[j], B.mn[j], B.mn[j], B.mn[j]};
                int ns = 1, nm = 1;
                if (f.ok && B.d > 0) {
                    const double t = f.a / B.d;
                    scCand[ns++] = floorIn(t, 0, lay.smax);
                    scCand[ns++] = ceilIn(t, 0, lay.smax);
                }
                if (f.ok && B.dmin > 0) {
                    const double t = -f.c / B.dmin;
                    mnCand[nm++] = floorIn(t, 0, lay.smax);
                    mnCand[nm++] = ceilIn(t, 0, lay.smax);
                }
                bool improved = false;
                for (int a = 0; a < ns; ++a) {
                    for (int b = 0; b < nm; ++b) {
                        if (scCand[a] == B.sc[j] && mnCand[b] == B.mn[j]) continue;
                        const float e = affineSubError(x + o, w + o, lay, B.d, B.dmin, scCand[a],
                                                       mnCand[b], tmp);
                        if (e < subErr[j]) {
                            subErr[j] = e;
                            B.sc[j] = scCand[a];
                            B.mn[j] = mnCand[b];
                            std::copy(tmp, tmp + lay.sub, B.L + o);
                            improved = true;
                        }
                    }
                }
                if (!improved) break;
            }
        }
        total = 0;
        for (int j = 0; j < lay.nsub; ++j) total += subErr[j];

        // Whole block: least-squares (d, dmin) for the integer sub-scales and levels.
        double aa = 0, ab = 0, bb = 0, ax = 0, bx = 0;
        for (int j = 0; j < lay.nsub; ++j) {
            for (int i = 0; i < lay.sub; ++i) {
                const int k = j * lay.sub + i;
                const double A = double(B.sc[j]) * B.L[k];
                const double Bv = -double(B.mn[j]);
                aa += w[k] * A * A;
                ab += w[k] * A * Bv;
                bb += w[k] * Bv * Bv;
                ax += w[k] * A * x[k];
                bx += w[k] * Bv * x[k];
            }
        }
        const double det = aa * bb - ab * ab;
        float dCand = B.d, mCand = B.dmin;
        if (det > 1e-12 * aa * bb && bb > 0) {
            dCand = halfRound(float((ax * bb - bx * ab) / det));
            mCand = halfRound(float((aa * bx - ab * ax) / det));
        } else if (aa > 0) {
            dCand = halfRound(float(ax / aa));
        }
        float candErr[16];
        const float e = affineBlockError(x, w, lay, dCand, mCand, B.sc, B.mn, tmp, candErr);
        if (e < total) {
            total = e;
            B.d = dCand;
            B.dmin = mCand;
            std::copy(tmp, tmp + kQK, B.L);
            std::copy(candErr, candErr + lay.nsub, subErr);
        } else if (round > 0) {
            break;
        }
    }
}

// Symmetric k-quants (Q3_K, Q6_K): value = (d * sc) * l.
struct SymLayout {
    int nsub, sub;
    int lo, hi;      // levels
    int sclo, schi;  // integer sub-scales
};

struct SymBlock {
    float d = 0;
    int sc[16] = {};
    int L[kQK] = {};
};

float symBlockError(const float* x, const float* w, const SymLayout& lay, float d, const int* sc,
                    int* L, float* subErr)
{
    float total = 0;
    for (int j = 0; j < lay.nsub; ++j) {
        const int o = j * lay.sub;
        subErr[j] = subError(x + o, w + o, lay.sub, d * float(sc[j]), 0, lay.lo, lay.hi, L + o);
        total += subErr[j];
    }
    return total;
}

void quantizeSymSuper(const float* x, const float* w, const SymLayout& lay, SymBlock& B)
{
    float s[16];
    float big = 0;
    for (int j = 0; j < lay.nsub; ++j) {
        const int o = j * lay.sub;
        s[j] = fitSymmetric(x + o, w + o, lay.sub, lay.lo, lay.hi, B.L + o);
        if (std::fabs(s[j]) > std::fabs(big)) big = s[j];
    }
    B.d = big != 0 ? halfRound(big / float(lay.sclo)) : 0.0f;
    for (int j = 0; j < lay.nsub; ++j)
        B.sc[j] = B.d != 0 ? roundClamp(s[j] / B.d, lay.sclo, lay.schi) : 0;
    float subErr[16];
    float total = symBlockError(x, w, lay, B.d, B.sc, B.L, subErr);
    if (B.d == 0) return;

    int tmp[kQK];
    for (int round = 0; round < 3; ++round) {
        for (int j = 0; j < lay.nsub; ++j) {
            const int o = j * lay.sub;
            for (int it = 0; it < 3; ++it) {
                float sxl = 0, sll = 0;
                for (int i = 0; i < lay.sub; ++i) {
                    sxl += w[o + i] * x[o + i] * float(B.L[o + i]);
                    sll += w[o + i] * float(B.L[o + i] * B.L[o + i]);
                }
                int cand[5];
                int nc = 0;
                if (sll > 0) {
                    const double t = double(sxl) / sll / B.d;
                    cand[nc++] = floorIn(t, lay.sclo, lay.schi);
                    cand[nc++] = ceilIn(t, lay.sclo, lay.schi);
                }
                const double t0 = double(s[j]) / B.d;
                cand[nc++] = floorIn(t0, lay.sclo, lay.schi);
                cand[nc++] = ceilIn(t0, lay.sclo, lay.schi);
                bool improved = false;
                for (int a = 0; a < nc; ++a) {
                    if (cand[a] == B.sc[j]) continue;
                    const float e = subError(x + o, w + o, lay.sub, B.d * float(cand[a]), 0, lay.lo,
                                             lay.hi, tmp);
                    if (e < subErr[j]) {
                        subErr[j] = e;
                        B.sc[j] = cand[a];
                        std::copy(tmp, tmp + lay.sub, B.L + o);
                        improved = true;
                    }
                }
                if (!improved) break;
            }
        }
        total = 0;
        for (int j = 0; j < lay.nsub; ++j) total += subErr[j];

        double num = 0, den = 0;
        for (int j = 0; j < lay.nsub; ++j) {
            for (int i = 0; i < lay.sub; ++i) {
                const int k = j * lay.sub + i;
                const double A = double(B.sc[j]) * B.L[k];
                num += w[k] * A * x[k];
                den += w[k] * A * A;
            }
        }
        if (!(den > 0)) break;
        const float dCand = halfRound(float(num / den));
        float candErr[16];
        const float e = symBlockError(x, w, lay, dCand, B.sc, tmp, candErr);
        if (e < total) {
            total = e;
            B.d = dCand;
            std::copy(tmp, tmp + kQK, B.L);
            std::copy(candErr, candErr + lay.nsub, subErr);
        } else if (round > 0) {
            break;
        }
    }
}

// ------------------------------------------------------------------ k-quant packing

constexpr AffineLayout kQ2Layout{16, 16, 3, 15};
constexpr AffineLayout kQ4Layout{8, 32, 15, 63};
constexpr AffineLayout kQ5Layout{8, 32, 31, 63};
constexpr SymLayout kQ3Layout{16, 16, -4, 3, -32, 31};
constexpr SymLayout kQ6Layout{16, 16, -32, 31, -128, 127};

// 2-bit fields of Q2_K/Q3_K: byte (e / 128) * 32 + e % 32, shift 2 * ((e % 128) / 32).
inline int twoBitByte(int e)
{
    return (e / 128) * 32 + e % 32;
}
inline int twoBitShift(int e)
{
    return 2 * ((e % 128) / 32);
}
// 4-bit fields of Q4_K/Q5_K: byte (e / 64) * 32 + e % 32, high nibble for the second 32.
inline int nibbleByte(int e)
{
    return (e / 64) * 32 + e % 32;
}
inline int nibbleShift(int e)
{
    return 4 * ((e % 64) / 32);
}

void packScaleMinK4(std::uint8_t* s, const int* sc, const int* mn)
{
    std::memset(s, 0, 12);
    for (int j = 0; j < 8; ++j) {
        if (j < 4) {
            s[j] = std::uint8_t(sc[j]);
            s[j + 4] = std::uint8_t(mn[j]);
        } else {
            s[j + 4] = std::uint8_t((sc[j] & 0xF) | ((mn[j] & 0xF) << 4));
            s[j - 4] |= std::uint8_t((sc[j] >> 4) << 6);
            s[j] |= std::uint8_t((mn[j] >> 4) << 6);
        }
    }
}

void unpackScaleMinK4(const std::uint8_t* s, int j, int& sc, int& mn)
{
    if (j < 4) {
        sc = s[j] & 63;
        mn = s[j + 4] & 63;
    } else {
        sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

void packQ2K(const AffineBlock& B, std::uint8_t* y)
{
    std::memset(y, 0, 84);
    for (int j = 0; j < 16; ++j) y[j] = std::uint8_t(B.sc[j] | (B.mn[j] << 4));
    for (int e = 0; e < kQK; ++e) y[16 + twoBitByte(e)] |= std::uint8_t(B.L[e] << twoBitShift(e));
    putHalf(y + 80, B.d);
    putHalf(y + 82, B.dmin);
}

void packQ4K(const AffineBlock& B, std::uint8_t* y)
{
    std::memset(y, 0, 144);
    putHalf(y, B.d);
    putHalf(y + 2, B.dmin);
    packScaleMinK4(y + 4, B.sc, B.mn);
    for (int e = 0; e < kQK; ++e) y[16 + nibbleByte(e)] |= std::uint8_t(B.L[e] << nibbleShift(e));
}

void packQ5K(const AffineBlock& B, std::uint8_t* y)
{
    std::memset(y, 0, 176);
    putHalf(y, B.d);
    putHalf(y + 2, B.dmin);
    packScaleMinK4(y + 4, B.sc, B.mn);
    for (int e = 0; e < kQK; ++e) {
        y[48 + nibbleByte(e)] |= std::uint8_t((B.L[e] & 0xF) << nibbleShift(e));
        y[16 + e % 32] |= std::uint8_t(((B.L[e] >> 4) & 1) << (e / 32));
    }
}

void packQ3K(const SymBlock& B, std::uint8_t* y)
{
    std::memset(y, 0, 110);
    for (int e = 0; e < kQK; ++e) {
        const int u = B.L[e] + 4;  // 0..7
        y[e % 32] |= std::uint8_t(((u >> 2) & 1) << (e / 32));
        y[32 + twoBitByte(e)] |= std::uint8_t((u & 3) << twoBitShift(e));
    }
    std::uint8_t* s = y + 96;
    for (int j = 0; j < 16; ++j) {
        const int v = B.sc[j] + 32;  // 0..63
        if (j < 8)
            s[j] |= std::uint8_t(v & 0xF);
        else
            s[j - 8] |= std::uint8_t((v & 0xF) << 4);
        s[8 + j % 4] |= std::uint8_t((v >> 4) << (2 * (j / 4)));
    }
    putHalf(y + 108, B.d);
}

int q3kScale(const std::uint8_t* s, int j)
{
    const int low = j < 8 ? (s[j] & 0xF) : (s[j - 8] >> 4);
    const int high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    return (low | (high << 4)) - 32;
}

// Q6_K: element e -> ql byte (e/128)*64 + e%32 + 32*(g&1), nibble 4*(g>>1), qh byte
// (e/128)*32 + e%32, shift 2*g, where g = (e%128)/32.
void packQ6K(const SymBlock& B, std::uint8_t* y)
{
    std::memset(y, 0, 210);
    for (int e = 0; e < kQK; ++e) {
        const int u = B.L[e] + 32;  // 0..63
        const int n = e / 128, g = (e % 128) / 32, l = e % 32;
        y[n * 64 + l + 32 * (g & 1)] |= std::uint8_t((u & 0xF) << (4 * (g >> 1)));
        y[128 + n * 32 + l] |= std::uint8_t((u >> 4) << (2 * g));
    }
    for (int j = 0; j < 16; ++j) y[192 + j] = std::uint8_t(std::int8_t(B.sc[j]));
    putHalf(y + 208, B.d);
}

// ------------------------------------------------------------------ legacy formats, searched

void searchSymLegacy(const float* x, const float* w, int lo, int hi, float& d, int* L)
{
    const float s = fitSymmetric(x, w, 32, lo, hi, L);
    float best = subError(x, w, 32, 0, 0, lo, hi, L);
    d = 0;
    int tmp[32];
    auto consider = [&](float cand) {
        const float e = subError(x, w, 32, cand, 0, lo, hi, tmp);
        if (e < best) {
            best = e;
            d = cand;
            std::copy(tmp, tmp + 32, L);
            return true;
        }
        return false;
    };
    consider(halfRound(s));
    for (int it = 0; it < 3; ++it) {
        float sxl = 0, sll = 0;
        for (int i = 0; i < 32; ++i) {
            sxl += w[i] * x[i] * float(L[i]);
            sll += w[i] * float(L[i] * L[i]);
        }
        if (!(sll > 0) || !consider(halfRound(sxl / sll))) break;
    }
}

void searchAffineLegacy(const float* x, const float* w, int nmax, float& d, float& m, int* L)
{
    float s = 0, c = 0;
    fitAffine(x, w, 32, nmax, false, s, c, L);
    d = halfRound(s);
    m = halfRound(c);
    float best = subError(x, w, 32, d, m, 0, nmax, L);
    int tmp[32];
    for (int it = 0; it < 3; ++it) {
        const LsFit f = fitLine(x, w, 32, L, false);
        if (!f.ok) break;
        const float dc = halfRound(float(f.a)), mc = halfRound(float(f.c));
        const float e = subError(x, w, 32, dc, mc, 0, nmax, tmp);
        if (!(e < best)) break;
        best = e;
        d = dc;
        m = mc;
        std::copy(tmp, tmp + 32, L);
    }
}

void searchedLegacy(TensorType type, const float* x, const float* w, std::uint8_t* y)
{
    int L[32];
    float d = 0, m = 0;
    switch (type) {
        case TensorType::Q8_0:
            searchSymLegacy(x, w, -128, 127, d, L);
            putHalf(y, d);
            for (int j = 0; j < 32; ++j) y[2 + j] = std::uint8_t(std::int8_t(L[j]));
            return;
        case TensorType::Q4_0:
            searchSymLegacy(x, w, -8, 7, d, L);
            putHalf(y, d);
            for (int j = 0; j < 16; ++j)
                y[2 + j] = std::uint8_t((L[j] + 8) | ((L[16 + j] + 8) << 4));
            return;
        case TensorType::Q5_0:
            searchSymLegacy(x, w, -16, 15, d, L);
            putHalf(y, d);
            for (int& l : L) l += 16;
            packQ5High(y + 2, y + 6, L);
            return;
        case TensorType::Q4_1:
            searchAffineLegacy(x, w, 15, d, m, L);
            putHalf(y, d);
            putHalf(y + 2, m);
            for (int j = 0; j < 16; ++j) y[4 + j] = std::uint8_t(L[j] | (L[16 + j] << 4));
            return;
        case TensorType::Q5_1:
            searchAffineLegacy(x, w, 31, d, m, L);
            putHalf(y, d);
            putHalf(y + 2, m);
            packQ5High(y + 4, y + 8, L);
            return;
        default: return;
    }
}

void encodeBlock(TensorType type, const float* x, const float* w, std::uint8_t* y)
{
    static const std::array<float, kQK> ones = [] {
        std::array<float, kQK> a{};
        a.fill(1.0f);
        return a;
    }();
    const float* wk = w ? w : ones.data();
    switch (type) {
        case TensorType::Q8_0: w ? searchedLegacy(type, x, w, y) : refQ8_0(x, y); return;
        case TensorType::Q4_0: w ? searchedLegacy(type, x, w, y) : refQ4_0(x, y); return;
        case TensorType::Q4_1: w ? searchedLegacy(type, x, w, y) : refQ4_1(x, y); return;
        case TensorType::Q5_0: w ? searchedLegacy(type, x, w, y) : refQ5_0(x, y); return;
        case TensorType::Q5_1: w ? searchedLegacy(type, x, w, y) : refQ5_1(x, y); return;
        case TensorType::Q2_K: {
            AffineBlock B;
            quantizeAffineSuper(x, wk, kQ2Layout, B);
            packQ2K(B, y);
            return;
        }
        case TensorType::Q4_K: {
            AffineBlock B;
            quantizeAffineSuper(x, wk, kQ4Layout, B);
            packQ4K(B, y);
            return;
        }
        case TensorType::Q5_K: {
            AffineBlock B;
            quantizeAffineSuper(x, wk, kQ5Layout, B);
            packQ5K(B, y);
            return;
        }
        case TensorType::Q3_K: {
            SymBlock B;
            quantizeSymSuper(x, wk, kQ3Layout, B);
            packQ3K(B, y);
            return;
        }
        case TensorType::Q6_K: {
            SymBlock B;
            quantizeSymSuper(x, wk, kQ6Layout, B);
            packQ6K(B, y);
            return;
        }
        default: return;
    }
}

// ------------------------------------------------------------------ codec

class GgmlCodec final : public FormatCodec {
public:
    static std::size_t rowBytes(const QuantizedTensor& q)
    {
        const auto& t = traits(q.format.type);
        return std::size_t(q.cols / t.blockSize) * t.blockBytes;
    }

    Status prepare(const float*, const float*, QuantizedTensor& q) const override
    {
        QL_TRY_STATUS(checkFormatFits(q.format, q.rows, q.cols));
        q.blocks.assign(rowBytes(q) * std::size_t(q.rows), 0);
        return {};
    }

    void encodeRows(const float* w, const float* importance, std::int64_t r0, std::int64_t r1,
                    QuantizedTensor& q) const override
    {
        const std::size_t rb = rowBytes(q);
        for (std::int64_t r = r0; r < r1; ++r) {
            // Shapes were checked in prepare(); a failure here would be a programmer bug.
            auto st = quantizeRowGgml(
                q.format.type, std::span<const float>(w + r * q.cols, std::size_t(q.cols)),
                std::span<std::uint8_t>(q.blocks.data() + r * rb, rb), importance);
            (void)st;
        }
    }

    void decodeRows(const QuantizedTensor& q, std::int64_t r0, std::int64_t r1,
                    float* out) const override
    {
        const std::size_t rb = rowBytes(q);
        for (std::int64_t r = r0; r < r1; ++r) {
            auto st = dequantizeRow(q.format.type,
                                    std::span<const std::uint8_t>(q.blocks.data() + r * rb, rb),
                                    std::span<float>(out + (r - r0) * q.cols, std::size_t(q.cols)));
            (void)st;
        }
    }

    static std::span<const std::uint8_t> blockOf(const QuantizedTensor& q, std::int64_t row,
                                                 std::int64_t col, int& index)
    {
        const auto& t = traits(q.format.type);
        const std::int64_t b = col / t.blockSize;
        index = int(col % t.blockSize);
        return std::span<const std::uint8_t>(q.blocks.data() + row * rowBytes(q) + b * t.blockBytes,
                                             t.blockBytes);
    }

    std::vector<float> gridLevels(const QuantizedTensor& q, std::int64_t row,
                                  std::int64_t col) const override
    {
        int index = 0;
        const auto block = blockOf(q, row, col, index);
        return ggmlSubBlockLevels(q.format.type, block, index);
    }

    QuantStep explain(const QuantizedTensor& q, float weight, std::int64_t row,
                      std::int64_t col) const override
    {
        int index = 0;
        const auto block = blockOf(q, row, col, index);
        const GgmlWeightCode wc = ggmlWeightCode(q.format.type, block, index);
        QuantStep st;
        st.scale = wc.scale;
        st.offset = wc.offset;
        st.codeMin = wc.levelMin;
        st.codeMax = wc.levelMax;
        st.scaled = wc.scale != 0 ? (double(weight) - wc.offset) / wc.scale : 0.0;
        st.rounded = std::nearbyint(st.scaled);
        st.clamped = std::clamp(st.rounded, st.codeMin, st.codeMax);
        st.code = wc.level;
        st.dequantized = wc.value;
        const auto name = std::string(tensorTypeName(q.format.type));
        st.note = name + ": sub-block " + std::to_string(wc.subBlock) + " of " +
                  std::to_string(wc.subBlockSize) + " weights";
        if (double(st.code) != st.clamped)
            st.note +=
                "; the stored level is not the nearest one for the stored fp16 scale (the "
                "encoder rounded with the unrounded scale)";
        return st;
    }
};

}  // namespace

bool isGgmlBlockType(TensorType type)
{
    switch (type) {
        case TensorType::Q8_0:
        case TensorType::Q4_0:
        case TensorType::Q4_1:
        case TensorType::Q5_0:
        case TensorType::Q5_1:
        case TensorType::Q2_K:
        case TensorType::Q3_K:
        case TensorType::Q4_K:
        case TensorType::Q5_K:
        case TensorType::Q6_K: return true;
        default: return false;
    }
}

Status quantizeRowGgml(TensorType type, std::span<const float> src, std::span<std::uint8_t> dst,
                       const float* importance)
{
    const auto& t = traits(type);
    if (!isGgmlBlockType(type))
        return makeError(ErrorCode::Unsupported,
                         std::string("not a llama.cpp block format: ") + std::string(t.name));
    if (src.size() % t.blockSize != 0)
        return makeError(ErrorCode::InvalidArgument, std::string(t.name) + " needs a multiple of " +
                                                         std::to_string(t.blockSize) +
                                                         " values; got " +
                                                         std::to_string(src.size()));
    const std::size_t blocks = src.size() / t.blockSize;
    if (dst.size() != blocks * t.blockBytes)
        return makeError(ErrorCode::InvalidArgument,
                         std::string(t.name) + ": destination holds " + std::to_string(dst.size()) +
                             " bytes, " + std::to_string(blocks * t.blockBytes) + " needed");

    // Importance: negative or NaN entries count as 0; a small floor keeps every weight in play so
    // no sub-block is left without a well-posed fit.
    std::vector<float> w;
    if (importance) {
        w.resize(src.size());
        double sum = 0;
        for (std::size_t i = 0; i < src.size(); ++i) {
            const float v = importance[i];
            w[i] = v > 0 && std::isfinite(v) ? v : 0.0f;
            sum += w[i];
        }
        const float floor = sum > 0 ? float(1e-6 * sum / double(src.size())) : 1.0f;
        for (float& v : w) v += floor;
    }
    for (std::size_t b = 0; b < blocks; ++b)
        encodeBlock(type, src.data() + b * t.blockSize,
                    importance ? w.data() + b * t.blockSize : nullptr,
                    dst.data() + b * t.blockBytes);
    return {};
}

GgmlWeightCode ggmlWeightCode(TensorType type, std::span<const std::uint8_t> block, int e)
{
    const std::uint8_t* y = block.data();
    GgmlWeightCode c;
    bool hasOffset = false;
    switch (type) {
        case TensorType::Q8_0:
            c.subBlockSize = 32;
            c.scale = getHalf(y);
            c.level = std::int8_t(y[2 + e]);
            c.levelMin = -128;
            c.levelMax = 127;
            break;
        case TensorType::Q4_0:
            c.subBlockSize = 32;
            c.scale = getHalf(y);
            c.level = ((y[2 + e % 16] >> (4 * (e / 16))) & 0xF) - 8;
            c.levelMin = -8;
            c.levelMax = 7;
            break;
        case TensorType::Q4_1:
            c.subBlockSize = 32;
            c.scale = getHalf(y);
            c.offset = getHalf(y + 2);
            hasOffset = true;
            c.level = (y[4 + e % 16] >> (4 * (e / 16))) & 0xF;
            c.levelMax = 15;
            break;
        case TensorType::Q5_0:
        case TensorType::Q5_1: {
            const bool q51 = type == TensorType::Q5_1;
            c.subBlockSize = 32;
            c.scale = getHalf(y);
            const std::uint8_t* qh = y + (q51 ? 4 : 2);
            const std::uint8_t* qs = y + (q51 ? 8 : 6);
            const int high = (qh[e / 8] >> (e % 8)) & 1;
            const int u = ((qs[e % 16] >> (4 * (e / 16))) & 0xF) | (high << 4);
            if (q51) {
                c.offset = getHalf(y + 2);
                hasOffset = true;
                c.level = u;
                c.levelMax = 31;
            } else {
                c.level = u - 16;
                c.levelMin = -16;
                c.levelMax = 15;
            }
            break;
        }
        case TensorType::Q2_K: {
            c.subBlock = e / 16;
            c.subBlockSize = 16;
            const std::uint8_t sc = y[c.subBlock];
            c.scale = getHalf(y + 80) * float(sc & 0xF);
            c.offset = -(getHalf(y + 82) * float(sc >> 4));
            hasOffset = true;
            c.level = (y[16 + twoBitByte(e)] >> twoBitShift(e)) & 3;
            c.levelMax = 3;
            break;
        }
        case TensorType::Q3_K: {
            c.subBlock = e / 16;
            c.subBlockSize = 16;
            c.scale = getHalf(y + 108) * float(q3kScale(y + 96, c.subBlock));
            const int low = (y[32 + twoBitByte(e)] >> twoBitShift(e)) & 3;
            const int high = (y[e % 32] >> (e / 32)) & 1;
            c.level = low - (high ? 0 : 4);
            c.levelMin = -4;
            c.levelMax = 3;
            break;
        }
        case TensorType::Q4_K:
        case TensorType::Q5_K: {
            const bool q5 = type == TensorType::Q5_K;
            c.subBlock = e / 32;
            c.subBlockSize = 32;
            int sc = 0, mn = 0;
            unpackScaleMinK4(y + 4, c.subBlock, sc, mn);
            c.scale = getHalf(y) * float(sc);
            c.offset = -(getHalf(y + 2) * float(mn));
            hasOffset = true;
            const std::uint8_t* qs = y + (q5 ? 48 : 16);
            c.level = (qs[nibbleByte(e)] >> nibbleShift(e)) & 0xF;
            if (q5) c.level |= ((y[16 + e % 32] >> (e / 32)) & 1) << 4;
            c.levelMax = q5 ? 31 : 15;
            break;
        }
        case TensorType::Q6_K: {
            c.subBlock = e / 16;
            c.subBlockSize = 16;
            c.scale = getHalf(y + 208) * float(std::int8_t(y[192 + c.subBlock]));
            const int n = e / 128, g = (e % 128) / 32, l = e % 32;
            const int low = (y[n * 64 + l + 32 * (g & 1)] >> (4 * (g >> 1))) & 0xF;
            const int high = (y[128 + n * 32 + l] >> (2 * g)) & 3;
            c.level = (low | (high << 4)) - 32;
            c.levelMin = -32;
            c.levelMax = 31;
            break;
        }
        default: return c;
    }
    c.value = hasOffset ? c.scale * float(c.level) + c.offset : c.scale * float(c.level);
    return c;
}

std::vector<float> ggmlSubBlockLevels(TensorType type, std::span<const std::uint8_t> block,
                                      int index)
{
    const GgmlWeightCode c = ggmlWeightCode(type, block, index);
    const bool hasOffset = type == TensorType::Q4_1 || type == TensorType::Q5_1 ||
                           type == TensorType::Q2_K || type == TensorType::Q4_K ||
                           type == TensorType::Q5_K;
    std::vector<float> v;
    for (int l = c.levelMin; l <= c.levelMax; ++l)
        v.push_back(hasOffset ? c.scale * float(l) + c.offset : c.scale * float(l));
    std::sort(v.begin(), v.end());
    v.erase(std::unique(v.begin(), v.end()), v.end());
    return v;
}

const FormatCodec& ggmlCodec()
{
    static const GgmlCodec codec;
    return codec;
}

}  // namespace ql
