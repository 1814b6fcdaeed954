//! Distance kernels between an f32 query and one stored vector, for the three element
//! types the graph stores: f32, IEEE half precision (as `u16` bits) and i8.
//!
//! On x86-64 with AVX2, FMA and F16C (checked at run time) eight lanes at a time;
//! elsewhere, and for the tail of a dimension that is not a multiple of eight, scalar.

/// An element type the graph stores.
pub(crate) trait Element: Copy + Default + Send + Sync + 'static {
    /// Bytes of one element in the index file.
    const BYTES: usize;
    fn to_f32(self) -> f32;
    /// `q · s`.
    fn dot(q: &[f32], s: &[Self]) -> f32;
    /// `Σ (q - scale·s)²`.
    fn l2(q: &[f32], s: &[Self], scale: f32) -> f32;
    fn write_le(self, out: &mut Vec<u8>);
    fn read_le(bytes: &[u8]) -> Self;
}

fn dot_scalar<T: Element>(q: &[f32], s: &[T]) -> f32 {
    q.iter().zip(s).map(|(a, b)| a * b.to_f32()).sum()
}

fn l2_scalar<T: Element>(q: &[f32], s: &[T], scale: f32) -> f32 {
    q.iter()
        .zip(s)
        .map(|(a, b)| {
            let d = a - scale * b.to_f32();
            d * d
        })
        .sum()
}

#[cfg(target_arch = "x86_64")]
fn simd() -> bool {
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
}

/// AVX2 kernels for one element type, given how eight of them load as eight f32 lanes.
#[cfg(target_arch = "x86_64")]
macro_rules! avx_kernels {
    ($ty:ty, $dot:ident, $l2:ident, |$p:ident| $load:expr) => {
        /// # Safety
        /// The CPU has AVX2, FMA and F16C; `s` is at least as long as `q`.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub(super) unsafe fn $dot(q: &[f32], s: &[$ty]) -> f32 {
            use std::arch::x86_64::*;
            let n = q.len() / 8 * 8;
            let (qp, sp) = (q.as_ptr(), s.as_ptr());
            let step = |acc: __m256, i: usize| {
                // SAFETY: i + 8 <= n <= q.len() <= s.len().
                let $p = unsafe { sp.add(i) };
                let v = unsafe { $load };
                let a = unsafe { _mm256_loadu_ps(qp.add(i)) };
                _mm256_fmadd_ps(a, v, acc)
            };
            hsum(sum4(n, step)) + dot_scalar(&q[n..], &s[n..])
        }

        /// # Safety
        /// As for the dot product.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub(super) unsafe fn $l2(q: &[f32], s: &[$ty], scale: f32) -> f32 {
            use std::arch::x86_64::*;
            let n = q.len() / 8 * 8;
            let (qp, sp) = (q.as_ptr(), s.as_ptr());
            let k = _mm256_set1_ps(scale);
            let step = |acc: __m256, i: usize| {
                // SAFETY: i + 8 <= n <= q.len() <= s.len().
                let $p = unsafe { sp.add(i) };
                let v = unsafe { $load };
                let a = unsafe { _mm256_loadu_ps(qp.add(i)) };
                let d = _mm256_fnmadd_ps(k, v, a);
                _mm256_fmadd_ps(d, d, acc)
            };
            hsum(sum4(n, step)) + l2_scalar(&q[n..], &s[n..], scale)
        }
    };
}

/// `step` over lanes `0..n` (a multiple of 8), into four accumulators so that the
/// sums of one lane do not wait on each other, added together at the end.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn sum4(
    n: usize,
    step: impl Fn(std::arch::x86_64::__m256, usize) -> std::arch::x86_64::__m256,
) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // SAFETY: setzero and add need only AVX, which the callers' AVX2 implies.
    let zero = unsafe { _mm256_setzero_ps() };
    let mut acc = [zero; 4];
    let mut i = 0;
    while i + 32 <= n {
        acc[0] = step(acc[0], i);
        acc[1] = step(acc[1], i + 8);
        acc[2] = step(acc[2], i + 16);
        acc[3] = step(acc[3], i + 24);
        i += 32;
    }
    while i < n {
        acc[0] = step(acc[0], i);
        i += 8;
    }
    // SAFETY: as above.
    unsafe { _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn hsum(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use super::*;
    avx_kernels!(f32, dot_f32, l2_f32, |p| _mm256_loadu_ps(p));
    avx_kernels!(u16, dot_f16, l2_f16, |p| _mm256_cvtph_ps(_mm_loadu_si128(
        p.cast::<__m128i>()
    )));
    avx_kernels!(i8, dot_i8, l2_i8, |p| _mm256_cvtepi32_ps(
        _mm256_cvtepi8_epi32(_mm_loadl_epi64(p.cast::<__m128i>()))
    ));
}

/// Dispatches to the AVX2 kernel where the CPU has it.
macro_rules! element {
    ($ty:ty, $bytes:expr, $dot:ident, $l2:ident, |$x:ident| $to:expr, |$b:ident| $from:expr) => {
        impl Element for $ty {
            const BYTES: usize = $bytes;
            #[inline]
            fn to_f32(self) -> f32 {
                let $x = self;
                $to
            }
            #[inline]
            fn dot(q: &[f32], s: &[Self]) -> f32 {
                debug_assert!(s.len() >= q.len());
                #[cfg(target_arch = "x86_64")]
                if simd() {
                    // SAFETY: the features were detected; s is as long as q.
                    return unsafe { avx::$dot(q, s) };
                }
                dot_scalar(q, s)
            }
            #[inline]
            fn l2(q: &[f32], s: &[Self], scale: f32) -> f32 {
                debug_assert!(s.len() >= q.len());
                #[cfg(target_arch = "x86_64")]
                if simd() {
                    // SAFETY: as above.
                    return unsafe { avx::$l2(q, s, scale) };
                }
                l2_scalar(q, s, scale)
            }
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn read_le(bytes: &[u8]) -> Self {
                let $b = bytes;
                $from
            }
        }
    };
}

element!(f32, 4, dot_f32, l2_f32, |x| x, |b| f32::from_le_bytes([
    b[0], b[1], b[2], b[3]
]));
element!(u16, 2, dot_f16, l2_f16, |x| f16_to_f32(x), |b| {
    u16::from_le_bytes([b[0], b[1]])
});
element!(i8, 1, dot_i8, l2_i8, |x| f32::from(x), |b| b[0] as i8);

/// `x` as IEEE half precision bits, rounded to nearest even; out of range becomes ±∞.
pub(crate) fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man == 0 { 0 } else { 0x200 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    let round = |value: u32, shift: u32| {
        let rest = value & ((1 << shift) - 1);
        let half = 1 << (shift - 1);
        let kept = value >> shift;
        kept + u32::from(rest > half || (rest == half && kept & 1 == 1))
    };
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        // Subnormal: the full mantissa, hidden bit included, scaled to units of 2^-24.
        return sign | round(man | 0x80_0000, (14 - e) as u32) as u16;
    }
    // A carry out of the mantissa moves into the exponent, as it should.
    sign | round(((e as u32) << 23) | man, 13) as u16
}

/// The value of IEEE half precision bits.
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    match exp {
        0 => {
            let magnitude = man as f32 * f32::from_bits(0x3380_0000); // 2^-24
            f32::from_bits(sign | magnitude.to_bits())
        }
        0x1f => f32::from_bits(sign | 0x7f80_0000 | (man << 13)),
        _ => f32::from_bits(sign | ((exp + 112) << 23) | (man << 13)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_half_survives_a_round_trip() {
        for h in 0..=u16::MAX {
            let x = f16_to_f32(h);
            if x.is_nan() {
                assert!(f16_to_f32(f32_to_f16(x)).is_nan());
            } else {
                assert_eq!(f32_to_f16(x), h, "{h:#06x} = {x}");
            }
        }
    }

    #[test]
    fn halves_round_to_nearest_even() {
        assert_eq!(f32_to_f16(1.0), 0x3c00);
        assert_eq!(f32_to_f16(-2.0), 0xc000);
        assert_eq!(f32_to_f16(65504.0), 0x7bff);
        assert_eq!(f32_to_f16(70000.0), 0x7c00);
        // 1 + 2^-11 lies halfway between 1 and 1 + 2^-10: to the even one, 1.
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00);
        assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
        assert_eq!(f32_to_f16(2f32.powi(-24)), 0x0001);
        assert_eq!(f32_to_f16(2f32.powi(-26)), 0x0000);
        let mut x = 1e-7f32;
        while x < 6e4 {
            let back = f16_to_f32(f32_to_f16(x));
            assert!(
                (back - x).abs() <= x * 2f32.powi(-11) + 2f32.powi(-25),
                "{x} → {back}"
            );
            x *= 1.013;
        }
    }

    #[test]
    fn the_kernels_agree_with_the_scalar_sums() {
        for dim in [1, 7, 8, 13, 192] {
            let q: Vec<f32> = (0..dim).map(|i| (i as f32 * 0.37).sin()).collect();
            let f: Vec<f32> = (0..dim).map(|i| (i as f32 * 0.11).cos()).collect();
            let h: Vec<u16> = f.iter().map(|x| f32_to_f16(*x)).collect();
            let b: Vec<i8> = f.iter().map(|x| (x * 127.0).round() as i8).collect();
            let close =
                |a: f32, b: f32| assert!((a - b).abs() <= 1e-3 * b.abs().max(1.0), "{a} vs {b}");
            close(f32::dot(&q, &f), dot_scalar(&q, &f));
            close(u16::dot(&q, &h), dot_scalar(&q, &h));
            close(i8::dot(&q, &b), dot_scalar(&q, &b));
            close(f32::l2(&q, &f, 1.0), l2_scalar(&q, &f, 1.0));
            close(u16::l2(&q, &h, 1.0), l2_scalar(&q, &h, 1.0));
            close(i8::l2(&q, &b, 0.01), l2_scalar(&q, &b, 0.01));
        }
    }
}
