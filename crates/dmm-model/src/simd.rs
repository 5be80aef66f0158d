//! Runtime dispatch for the elementwise and reduction loops: the crate is built for baseline
//! x86-64 (SSE2, 4-wide at best), so each hot loop is compiled a second time with AVX2 and picked
//! (with FMA) when the CPU has them, as the `gemm` crate does for its kernels. Both versions run
//! the same operations in the same order (Rust never fuses a multiply and an add on its own; a
//! kernel that wants one says so with [`Real::fma`]), so results are bit for bit the same; only
//! the width of the registers differs.

use candle_core::WithDType;

/// The kernels' element types, f32 and f64, with a fused multiply-add: one rounding, and one
/// instruction in the AVX2 versions (compiled with FMA).
pub(crate) trait Real: WithDType {
    /// `self·a + b`, rounded once.
    fn fma(self, a: Self, b: Self) -> Self;
}

impl Real for f32 {
    #[inline(always)]
    fn fma(self, a: Self, b: Self) -> Self {
        self.mul_add(a, b)
    }
}

impl Real for f64 {
    #[inline(always)]
    fn fma(self, a: Self, b: Self) -> Self {
        self.mul_add(a, b)
    }
}

/// Defines `fn $name` twice: as written, and compiled for AVX2 and FMA (x86-64 only), calling
/// the latter when the CPU supports both. The body must be safe code.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident<$T:ident: $bound:path>($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name<$T: $bound>($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn portable<$T: $bound>($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2<$T: $bound>($($arg: $ty),*) $(-> $ret)? {
                    portable($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the two features `avx2` was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            portable($($arg),*)
        }
    };
}
pub(crate) use multiversion;
