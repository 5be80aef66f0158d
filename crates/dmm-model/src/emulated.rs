//! Tests only: the CUDA kernels of `kernels/dmm.cu`, compiled by the host's C++ compiler and run
//! on the CPU, so that their index arithmetic is checked against the CPU ops on any machine. A
//! prelude maps the CUDA built-ins to one thread: a grid-stride loop then covers every element,
//! and a per-channel reduction runs channel by channel (`set_block`) with a block of one thread.
//! What this cannot check, the launch configurations and cuBLAS, `dmm gpu-check` does on a GPU.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};

/// CUDA's built-ins for a single host thread.
const PRELUDE: &str = r#"
#include <cmath>
#include <cstddef>
using std::isnan;
struct Dim3 { unsigned x, y, z; };
static Dim3 blockIdx = {0, 0, 0}, threadIdx = {0, 0, 0}, blockDim = {1, 1, 1}, gridDim = {1, 1, 1};
#define __global__
#define __device__
#define __shared__ static
#define __syncthreads()
template <typename T> T atomicAdd(T *p, T v) { T old = *p; *p += v; return old; }
extern "C" void emu_set_block(unsigned b) { blockIdx.x = b; }
"#;

/// The compiled kernels, loaded.
pub(crate) struct Emulated {
    lib: libloading::Library,
}

impl Emulated {
    /// The entry point `name` (e.g. `im2col_f64`) as the function type `F`.
    ///
    /// # Safety
    /// `F` must be the kernel's exact C signature.
    pub(crate) unsafe fn get<F: Copy>(&self, name: &str) -> F {
        // SAFETY: forwarded to the caller; the library lives as long as `self` (a static).
        unsafe { *self.lib.get::<F>(name.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}")) }
    }

    /// Runs the next calls as block `b` of a per-channel launch (grid-stride kernels need 0).
    pub(crate) fn set_block(&self, b: usize) {
        // SAFETY: the prelude defines `void emu_set_block(unsigned)`.
        unsafe { self.get::<unsafe extern "C" fn(u32)>("emu_set_block")(b as u32) }
    }
}

fn compile(out: &Path) -> Result<PathBuf, String> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels/dmm.cu");
    let unit = out.join("emulated.cpp");
    std::fs::write(&unit, format!("{PRELUDE}\n#include \"{}\"\n", source.display())).map_err(|e| e.to_string())?;
    let lib = out.join("libdmm_emulated.so");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let status = Command::new(&cxx).args(["-std=c++17", "-O1", "-shared", "-fPIC", "-o"]).arg(&lib).arg(&unit).status().map_err(|e| format!("{cxx}: {e}"))?;
    if !status.success() {
        return Err(format!("{cxx} failed on {} ({status})", source.display()));
    }
    Ok(lib)
}

/// The kernels, compiled once per test process, held by one test at a time (the emulated
/// `blockIdx` is shared) and reset to block 0. Panics if the compiler fails: the kernel source
/// must stay valid C++ for the host.
pub(crate) fn kernels() -> MutexGuard<'static, Emulated> {
    static KERNELS: OnceLock<Mutex<Emulated>> = OnceLock::new();
    let kernels = KERNELS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("dmm-emulated-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = compile(&dir).unwrap_or_else(|e| panic!("compiling kernels/dmm.cu for the host: {e}"));
        // SAFETY: a library of plain C functions built just now, with no initialisers to run.
        let lib = unsafe { libloading::Library::new(&path) }.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Mutex::new(Emulated { lib })
    });
    let guard = kernels.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    guard.set_block(0);
    guard
}

/// Deterministic test data in [-2, 2).
pub(crate) fn data(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = dmm_core::SplitMix64::new(seed);
    (0..n).map(|_| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0).collect()
}

/// `max |a − b|`; a NaN on one side only counts as infinite (an unwritten output stays NaN).
pub(crate) fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| match (x.is_nan(), y.is_nan()) {
            (true, true) => 0.0,
            (false, false) => (x - y).abs(),
            _ => f64::INFINITY,
        })
        .fold(0.0, f64::max)
}
