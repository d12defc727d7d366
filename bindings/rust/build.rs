// Finds an installed kvpage (its C API, libkvpage.so) for the crate:
//   KVPAGE_PREFIX=/opt/kvpage   the prefix `cmake --install` was given, or
//   PKG_CONFIG_PATH=...         a folder holding kvpage.pc (pkg-config), or
//   KVPAGE_LIB_DIR=build/dev    the folder of libkvpage.so itself (a build
//                               tree, for kvpage's own benchmarks).
// KVPAGE_LIB_DIR wins, then KVPAGE_PREFIX, then pkg-config. The library's folder is also put in
// the binaries' run path, so that tests and examples run without
// LD_LIBRARY_PATH.
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn from_prefix(prefix: &Path) -> Option<PathBuf> {
    for dir in ["lib", "lib64", "lib/x86_64-linux-gnu", "lib/aarch64-linux-gnu"] {
        let candidate = prefix.join(dir);
        if candidate.join("libkvpage.so").exists() {
            return Some(candidate);
        }
    }
    None
}

fn from_pkg_config() -> Option<PathBuf> {
    let out = Command::new("pkg-config")
        .args(["--variable=libdir", "kvpage"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8(out.stdout).ok()?.trim().to_string();
    if dir.is_empty() {
        None
    } else {
        Some(PathBuf::from(dir))
    }
}

fn main() {
    println!("cargo:rerun-if-env-changed=KVPAGE_LIB_DIR");
    println!("cargo:rerun-if-env-changed=KVPAGE_PREFIX");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    let libdir = match env::var_os("KVPAGE_LIB_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => find_installed(),
    };
    println!("cargo:rustc-link-search=native={}", libdir.display());
    println!("cargo:rustc-link-lib=dylib=kvpage");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", libdir.display());
    println!("cargo:libdir={}", libdir.display());
}

fn find_installed() -> PathBuf {
    match env::var_os("KVPAGE_PREFIX") {
        Some(prefix) => from_prefix(Path::new(&prefix)).unwrap_or_else(|| {
            panic!(
                "kvpage: KVPAGE_PREFIX={} holds no lib/libkvpage.so: run \
                 `cmake --install <build> --prefix <that prefix>` first",
                Path::new(&prefix).display()
            )
        }),
        None => from_pkg_config().unwrap_or_else(|| {
            panic!(
                "kvpage: no installed kvpage found: set KVPAGE_PREFIX to the \
                 prefix kvpage was installed to, or PKG_CONFIG_PATH to the \
                 folder holding its kvpage.pc"
            )
        }),
    }
}
