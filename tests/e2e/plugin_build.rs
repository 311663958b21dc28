//! Builds the workspace's plugins for wasm32-wasip2, once per process. Shared by the end-to-end
//! tests and the benchmarks (included with `#[path]`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ has a parent").to_path_buf()
}

/// The directory holding `network_session.wasm`, `template.wasm` and `faulty.wasm`, built the
/// first time it is asked for (cargo skips crates that did not change).
pub fn plugin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = root();
        // A target directory of its own: the outer cargo may hold the lock on target/.
        let target = root.join("target").join("plugins");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&root)
            .args(["build", "--quiet", "--target", "wasm32-wasip2", "--profile", "plugin"])
            .args(["-p", "network-session", "-p", "template", "-p", "faulty"])
            .arg("--target-dir")
            .arg(&target)
            // Flags meant for the host build must not leak into the Wasm build.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_RUSTFLAGS")
            .status()
            .expect("cannot run cargo to build the plugins");
        assert!(
            status.success(),
            "building the plugins failed; is the target installed? `rustup target add wasm32-wasip2`"
        );
        target.join("wasm32-wasip2").join("plugin")
    })
}

/// The path of a built plugin, e.g. `plugin("faulty")`.
pub fn plugin(name: &str) -> PathBuf {
    plugin_dir().join(format!("{}.wasm", name.replace('-', "_")))
}
