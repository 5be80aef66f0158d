//! Where the network runs: `cpu`, or `cuda` / `cuda:N` in a build with the `cuda` feature.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

/// A device as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The CPU kernels of this crate, on all cores.
    #[default]
    Cpu,
    /// The CUDA device with this ordinal.
    Cuda(usize),
}

impl DeviceSpec {
    /// Whether this build can open CUDA devices.
    pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

    /// Opens the device. CUDA fails in a build without the `cuda` feature, or when the driver,
    /// cuBLAS or the device cannot be found.
    pub fn open(self) -> crate::Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(_) if !Self::CUDA_BUILT => Err(crate::Error::Device(format!(
                "{self}: this dmm was built without CUDA; build it with `cargo xtask cuda-build`"
            ))),
            Self::Cuda(n) => open_cuda(n).map_err(|e| crate::Error::Device(format!("{self}: {e}"))),
        }
    }
}

/// `Device::new_cuda`, with cudarc's panic on a missing library (it loads the driver and cuBLAS
/// as the device opens) turned into an error that says which library and where to look.
fn open_cuda(ordinal: usize) -> Result<Device, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = std::panic::catch_unwind(|| Device::new_cuda(ordinal));
    std::panic::set_hook(hook);
    match opened {
        Ok(Ok(device)) => Ok(device),
        Ok(Err(e)) => Err(format!("cannot open the device ({e})")),
        Err(payload) => {
            let msg = payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied()).unwrap_or("");
            Err(match msg.split('"').nth(1).filter(|_| msg.starts_with("Unable to dynamically load")) {
                Some(lib) => format!(
                    "cannot load the CUDA library lib{lib}.so: no NVIDIA driver here, or LD_LIBRARY_PATH does not reach it \
                     (scripts/gpu-check.sh finds the ones PyTorch installed)"
                ),
                None => format!("CUDA failed while opening the device: {msg}"),
            })
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("unknown device {s:?}: expected cpu, cuda or cuda:N")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_back() {
        for (text, spec) in [("cpu", DeviceSpec::Cpu), ("cuda", DeviceSpec::Cuda(0)), ("cuda:3", DeviceSpec::Cuda(3))] {
            assert_eq!(text.parse::<DeviceSpec>(), Ok(spec));
        }
        assert_eq!(DeviceSpec::Cuda(3).to_string(), "cuda:3");
        for bad in ["gpu", "cuda:", "cuda:x", "CPU", "cuda:-1"] {
            assert!(bad.parse::<DeviceSpec>().unwrap_err().contains("expected cpu, cuda or cuda:N"), "{bad}");
        }
    }

    #[test]
    fn cpu_opens_and_cuda_says_what_is_missing() {
        assert!(DeviceSpec::Cpu.open().unwrap().is_cpu());
        if !DeviceSpec::CUDA_BUILT {
            let err = DeviceSpec::Cuda(0).open().unwrap_err().to_string();
            assert!(err.contains("built without CUDA") && err.contains("cuda-build"), "{err}");
        }
    }
}
