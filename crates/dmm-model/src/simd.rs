//! Runtime dispatch for the elementwise and reduction loops: the crate is built for baseline
//! x86-64 (SSE2, 4-wide at best), so each hot loop is compiled a second time with AVX2 and picked
//! when the CPU has it, as the `gemm` crate does for its kernels. Both versions run the same
//! operations in the same order (Rust never fuses a multiply and an add on its own), so results
//! are bit for bit the same; only the width of the registers differs.

/// Defines `fn $name` twice: as written, and compiled for AVX2 (x86-64 only), calling the latter
/// when the CPU supports it. The body must be safe code.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident<$T:ident: $bound:path>($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name<$T: $bound>($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn portable<$T: $bound>($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                fn avx2<$T: $bound>($($arg: $ty),*) $(-> $ret)? {
                    portable($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has the one feature `avx2` was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            portable($($arg),*)
        }
    };
}
pub(crate) use multiversion;
