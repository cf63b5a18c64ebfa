//! Records the tokio version that Cargo resolved (from Cargo.lock) so the JSON context says
//! which Tokio the numbers belong to.
use std::{env, fs, path::PathBuf};

fn main() {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let lock = dir.join("Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let mut version = String::from("unknown");
    if let Ok(text) = fs::read_to_string(&lock) {
        let mut in_tokio = false;
        for line in text.lines() {
            let line = line.trim();
            if line == "[[package]]" {
                in_tokio = false;
            } else if line == "name = \"tokio\"" {
                in_tokio = true;
            } else if in_tokio && line.starts_with("version = ") {
                version = line.trim_start_matches("version = ").trim_matches('"').to_string();
                break;
            }
        }
    }
    println!("cargo:rustc-env=TOKIO_PEER_TOKIO_VERSION={}", version);
}
