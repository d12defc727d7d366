// Finds an installed kvpage (its C API, libkvpage.so) for the crate:
//   KVPAGE_PREFIX=/opt/kvpage   the prefix `cmake --install` was given, or
//   PKG_CONFIG_PATH=...         a folder holding kvpage.pc (pkg-config).
// KVPAGE_PREFIX wins when both are set. The library's folder is also put in
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
    println!("cargo:rerun-if-env-changed=KVPAGE_PREFIX");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    let libdir = match env::var_os("KVPAGE_PREFIX") {
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
    };
    println!("cargo:rustc-link-search=native={}", libdir.display());
    println!("cargo:rustc-link-lib=dylib=kvpage");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", libdir.display());
    println!("cargo:libdir={}", libdir.display());
}
