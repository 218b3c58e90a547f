//! What the installed QEMU is: its version (older than 7.2 is refused at start-up, with the
//! path and the version in the message) and the machine type new VMs get. The type is the
//! versioned one the `pc` alias names (`pc-i440fx-7.2` on Debian bookworm's QEMU,
//! `pc-i440fx-10.0` on the backports one): a VM keeps the type it was started with, so a
//! migration target runs it with the same one.

use std::path::Path;
use std::process::Command;

/// The oldest QEMU gantry drives (Debian bookworm's).
pub const OLDEST: (u32, u32) = (7, 2);

#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub version: (u32, u32),
    pub machine: String,
}

pub fn probe(qemu: &Path) -> Result<Probe, String> {
    let run = |arg: &[&str]| -> Result<String, String> {
        let out = Command::new(qemu)
            .args(arg)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", qemu.display()))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let banner = run(&["--version"])?;
    let version = version(&banner).ok_or_else(|| {
        format!(
            "{} --version said {banner:?}: not a QEMU version",
            qemu.display()
        )
    })?;
    if version < OLDEST {
        return Err(format!(
            "{} is QEMU {}.{}; gantry needs QEMU {}.{} or newer",
            qemu.display(),
            version.0,
            version.1,
            OLDEST.0,
            OLDEST.1
        ));
    }
    let machines = run(&["-machine", "help"])?;
    Ok(Probe {
        version,
        machine: pc_machine(&machines).unwrap_or_else(|| "pc".into()),
    })
}

/// `QEMU emulator version 10.0.2 (Debian ...)` → (10, 0).
fn version(banner: &str) -> Option<(u32, u32)> {
    let rest = banner.split("version ").nth(1)?;
    let mut parts = rest.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The versioned type behind the `pc` alias in `-machine help`.
fn pc_machine(help: &str) -> Option<String> {
    help.lines()
        .find(|l| l.split_whitespace().next() == Some("pc"))?
        .split("(alias of ")
        .nth(1)?
        .split(')')
        .next()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_machine_types_of_the_supported_qemus() {
        assert_eq!(
            version("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\n"),
            Some((10, 0))
        );
        assert_eq!(
            version("QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7+deb12u12)"),
            Some((7, 2))
        );
        assert_eq!(version("something else"), None);
        let bookworm = "Supported machines are:\n\
            pc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-7.2)\n\
            pc-i440fx-7.2        Standard PC (i440FX + PIIX, 1996) (default)\n\
            q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-7.2)\n";
        assert_eq!(pc_machine(bookworm).as_deref(), Some("pc-i440fx-7.2"));
        assert_eq!(pc_machine("none    empty machine\n"), None);
        assert!((7, 1) < OLDEST && (10, 0) > OLDEST);
    }
}
