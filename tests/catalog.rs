//! The opcode catalog is generated from `src/opcodes/opcodes.json` by `tools/gen_catalog.py`:
//! regenerate it here and fail when the checked-in `src/opcodes/catalog.rs` differs.

use std::io::Write;
use std::process::{Command, Stdio};

#[test]
fn checked_in_catalog_is_what_the_generator_makes() {
    let root = env!("CARGO_MANIFEST_DIR");
    let generated = Command::new("python3")
        .arg(format!("{root}/tools/gen_catalog.py"))
        .output()
        .expect("python3 runs the generator");
    assert!(
        generated.status.success(),
        "generator failed: {}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let mut rustfmt = Command::new("rustfmt")
        .args(["--edition", "2024", "--emit", "stdout"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("rustfmt runs");
    rustfmt
        .stdin
        .take()
        .expect("stdin")
        .write_all(&generated.stdout)
        .expect("feed rustfmt");
    let formatted = rustfmt.wait_with_output().expect("rustfmt output");
    assert!(formatted.status.success(), "rustfmt failed");
    let checked_in = std::fs::read_to_string(format!("{root}/src/opcodes/catalog.rs")).unwrap();
    assert!(
        String::from_utf8_lossy(&formatted.stdout) == checked_in,
        "src/opcodes/catalog.rs is stale: run \
         python3 tools/gen_catalog.py | rustfmt --edition 2024 > src/opcodes/catalog.rs"
    );
}
