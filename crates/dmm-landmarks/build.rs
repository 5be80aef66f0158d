//! Compiles the C++ shim over the system dlib when the `dlib` feature is on; does nothing otherwise.

fn main() {
    #[cfg(feature = "dlib")]
    {
        println!("cargo:rerun-if-changed=src/shim.cpp");
        cc::Build::new()
            .cpp(true)
            .file("src/shim.cpp")
            .flag_if_supported("-std=c++14")
            .flag_if_supported("-O2")
            .flag_if_supported("-Wno-deprecated-declarations")
            .compile("dmm_dlib_shim");
        // Debian's libdlib-dev; its headers call LAPACK directly (liblapack-dev, libblas-dev).
        for lib in ["dlib", "lapack", "blas", "pthread"] {
            println!("cargo:rustc-link-lib={lib}");
        }
    }
}
