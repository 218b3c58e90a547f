//! The host side of a VM's NICs, as Ganeti's `kvm-ifup` sets it up: each NIC is a tap that QEMU
//! creates (named here, so it is found again after a gantry restart, and gone with the QEMU
//! process), then attached by mode:
//! - `bridged`: the tap joins the bridge named by `link`;
//! - `routed`: a host route to the NIC's IP through the tap (in table `link` when given), with
//!   proxy ARP and forwarding on the tap;
//! - `openvswitch`: the tap is a port of the switch `link` (`ovs-vsctl`), VLANs from `vlan`.
//!
//! Attaching is idempotent: it runs after every launch, after re-adopting a running VM, and
//! again for a migration source whose target was discarded.

use crate::backends::NicNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::Path;
use tokio::process::Command;

/// One NIC's host side: the tap QEMU opens and what it is attached to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostNic {
    pub tap: String,
    pub mode: String,
    pub link: String,
    pub ip: Option<IpAddr>,
    #[serde(default)]
    pub vlan: String,
}

/// The tap of NIC `index` of the VM whose run dir is `run_dir`: unique per QEMU process on this
/// host (a migration target on the same host has its own run dir), and at most 15 bytes.
pub fn tap_name(run_dir: &Path, index: usize) -> String {
    use md5::{Digest, Md5};
    let digest = Md5::digest(run_dir.display().to_string().as_bytes());
    let hex: String = digest[..5].iter().map(|b| format!("{b:02x}")).collect();
    format!("gt{hex}n{index}")
}

/// An interface, bridge, switch or routing table name that is safe as one argument of `ip` or
/// `ovs-vsctl`: what Linux allows in interface names, never an option.
fn is_link_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The host side of every NIC, checked: a mode gantry knows, a link that is a plain name, an IP
/// that parses (and is there when the mode routes to it).
pub fn plan(nics: &[NicNet], run_dir: &Path) -> Result<Vec<HostNic>, String> {
    nics.iter()
        .enumerate()
        .map(|(n, nic)| {
            let ip = match &nic.ip {
                Some(text) => Some(
                    text.parse::<IpAddr>()
                        .map_err(|_| format!("NIC {n}: '{text}' is not an IP address"))?,
                ),
                None => None,
            };
            match nic.mode.as_str() {
                "bridged" | "openvswitch" if !is_link_name(&nic.link) => {
                    return Err(format!(
                        "NIC {n}: mode {} needs a link naming a {}; '{}' is not a valid interface name",
                        nic.mode,
                        if nic.mode == "bridged" { "bridge" } else { "switch" },
                        nic.link
                    ));
                }
                "routed" if ip.is_none() => {
                    return Err(format!("NIC {n}: routed mode needs an IP address"));
                }
                "routed" if !nic.link.is_empty() && !is_link_name(&nic.link) => {
                    return Err(format!(
                        "NIC {n}: '{}' is not a routing table name",
                        nic.link
                    ));
                }
                "bridged" | "routed" | "openvswitch" => {}
                other => return Err(format!("NIC {n}: unknown NIC mode '{other}'")),
            }
            Ok(HostNic {
                tap: tap_name(run_dir, n),
                mode: nic.mode.clone(),
                link: nic.link.clone(),
                ip,
                vlan: nic.vlan.clone(),
            })
        })
        .collect()
}

/// What must exist before QEMU starts: the bridges, and `ovs-vsctl` for switch ports.
pub fn check(nics: &[HostNic]) -> Result<(), String> {
    for (n, nic) in nics.iter().enumerate() {
        match nic.mode.as_str() {
            "bridged"
                if !Path::new("/sys/class/net")
                    .join(&nic.link)
                    .join("bridge")
                    .exists() =>
            {
                return Err(format!(
                    "NIC {n}: bridge '{}' does not exist on this host (create it, e.g. `ip link add {} type bridge`, or change the NIC's link)",
                    nic.link, nic.link
                ));
            }
            "openvswitch" if which("ovs-vsctl").is_none() => {
                return Err(format!(
                    "NIC {n}: mode openvswitch needs ovs-vsctl, which is not installed on this host"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(tool))
            .find(|p| p.is_file())
    })
}

/// Attaches every tap of a running QEMU to its network.
pub async fn attach(nics: &[HostNic]) -> Result<(), String> {
    for nic in nics {
        match nic.mode.as_str() {
            "bridged" => {
                run(
                    "ip",
                    &["link", "set", "dev", &nic.tap, "master", &nic.link, "up"],
                )
                .await?
            }
            "routed" => {
                run("ip", &["link", "set", "dev", &nic.tap, "up"]).await?;
                let Some(ip) = nic.ip else { continue };
                let family = if ip.is_ipv4() { "ipv4" } else { "ipv6" };
                for knob in ["proxy_arp", "forwarding"] {
                    if family == "ipv6" && knob == "proxy_arp" {
                        continue;
                    }
                    let path = format!("/proc/sys/net/{family}/conf/{}/{knob}", nic.tap);
                    std::fs::write(&path, "1").map_err(|e| format!("{path}: {e}"))?;
                }
                let ip = ip.to_string();
                let mut args = vec!["route", "replace", &ip, "proto", "static", "dev", &nic.tap];
                if !nic.link.is_empty() {
                    args.extend(["table", &nic.link]);
                }
                run("ip", &args).await?;
            }
            "openvswitch" => {
                let mut args = vec![
                    "--may-exist".to_string(),
                    "add-port".into(),
                    nic.link.clone(),
                    nic.tap.clone(),
                ];
                args.extend(ovs_vlan_settings(&nic.vlan)?);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                run("ovs-vsctl", &args).await?;
                run("ip", &["link", "set", "dev", &nic.tap, "up"]).await?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Ganeti's VLAN notation for openvswitch ports: `.10` (access port, tag 10), `:10:20` (trunk of
/// 10 and 20), `.10:20` (tag 10, trunk 20), as `ovs-vsctl` settings.
fn ovs_vlan_settings(vlan: &str) -> Result<Vec<String>, String> {
    if vlan.is_empty() {
        return Ok(Vec::new());
    }
    let bad = || format!("'{vlan}' is not a VLAN setting (.TAG, :TRUNK:TRUNK or .TAG:TRUNK)");
    let (tag, trunks) = match vlan.strip_prefix('.') {
        Some(rest) => match rest.split_once(':') {
            Some((tag, trunks)) => (Some(tag), trunks),
            None => (Some(rest), ""),
        },
        None => (None, vlan.strip_prefix(':').ok_or_else(bad)?),
    };
    let number = |t: &str| t.parse::<u16>().map_err(|_| bad());
    let mut settings = Vec::new();
    if let Some(tag) = tag {
        settings.push(format!("tag={}", number(tag)?));
    }
    let trunks: Vec<u16> = trunks
        .split(':')
        .filter(|t| !t.is_empty())
        .map(number)
        .collect::<Result<_, _>>()?;
    if !trunks.is_empty() {
        let list: Vec<String> = trunks.iter().map(u16::to_string).collect();
        settings.push(format!("trunks={}", list.join(",")));
    }
    Ok(settings)
}

async fn run(tool: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .await
        .map_err(|e| format!("cannot run {tool}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{tool} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(mode: &str, link: &str, ip: Option<&str>) -> NicNet {
        NicNet {
            mode: mode.into(),
            link: link.into(),
            ip: ip.map(str::to_string),
            vlan: String::new(),
        }
    }

    #[test]
    fn taps_are_short_and_differ_per_run_dir() {
        let a = tap_name(Path::new("/tmp/gantry-1/abcd"), 0);
        let b = tap_name(Path::new("/tmp/gantry-1/abcd-ef"), 0);
        assert!(a.len() <= 15 && a.starts_with("gt"), "{a}");
        assert_ne!(a, b);
        assert_ne!(a, tap_name(Path::new("/tmp/gantry-1/abcd"), 1));
    }

    #[test]
    fn links_and_addresses_that_could_become_options_are_refused() {
        let dir = Path::new("/run/x");
        assert!(plan(&[nic("bridged", "br0", None)], dir).is_ok());
        assert!(plan(&[nic("bridged", "-all", None)], dir).is_err());
        assert!(plan(&[nic("bridged", "br0; reboot", None)], dir).is_err());
        assert!(plan(&[nic("routed", "", None)], dir).is_err());
        assert!(plan(&[nic("routed", "", Some("10.0.0.1 table 1"))], dir).is_err());
        assert!(plan(&[nic("routed", "", Some("10.0.0.1"))], dir).is_ok());
        assert!(plan(&[nic("user", "", None)], dir).is_err());
    }

    #[test]
    fn vlan_notation_becomes_ovs_settings() {
        assert_eq!(ovs_vlan_settings(".10").unwrap(), ["tag=10"]);
        assert_eq!(ovs_vlan_settings(":10:20").unwrap(), ["trunks=10,20"]);
        assert_eq!(
            ovs_vlan_settings(".10:20").unwrap(),
            ["tag=10", "trunks=20"]
        );
        assert!(ovs_vlan_settings("10").is_err());
        assert!(ovs_vlan_settings(".x").is_err());
    }
}
