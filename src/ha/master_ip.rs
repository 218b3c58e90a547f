//! The master IP (Ganeti's master IP on `master_netdev`): one address that moves with the
//! leadership, so a client that knows a single address (Ganeti's RAPI client, the htools)
//! follows the leader. The leader adds it to its device and announces it with gratuitous ARP,
//! as Ganeti's `master-ip-setup` does. Every master drops it when it starts and before it
//! restarts on losing the leadership (a process of this host may have held it), and when it
//! shuts down. Before taking it the leader asks whether another host still answers for it
//! (`arping -D`): a dead leader process on a live host leaves it there until `gantry master-ip
//! drop` (systemd's `ExecStopPost`) or that host's next gantry drops it, and the new leader
//! tries again until then, where Ganeti would refuse once. IPv4 only (Ganeti uses `ndisc6`
//! for IPv6).

use backon::{ConstantBuilder, Retryable};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct MasterIp {
    ip: Ipv4Addr,
    prefix: u8,
    device: String,
}

impl MasterIp {
    /// `address` as `A.B.C.D/PREFIX` (the prefix defaults to 32), `device` a network device.
    pub fn parse(address: &str, device: &str) -> Result<MasterIp, String> {
        let (ip, prefix) = address.split_once('/').unwrap_or((address, "32"));
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("--master-ip {address}: not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("--master-ip {address}: the prefix length must be 0-32"))?;
        // A device name as the kernel allows it (IFNAMSIZ), and nothing `ip` could take for an
        // option.
        let valid = !device.is_empty()
            && device.len() <= 15
            && !device.starts_with('-')
            && device
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
        if !valid {
            return Err(format!(
                "--master-netdev {device:?}: not a network device name"
            ));
        }
        Ok(MasterIp {
            ip,
            prefix,
            device: device.to_string(),
        })
    }

    fn cidr(&self) -> String {
        format!("{}/{}", self.ip, self.prefix)
    }

    /// Removes the address from this host's device if it is there (blocking: it also runs on
    /// the keep-alive thread, just before the process is replaced).
    pub fn drop_here(&self) {
        match self.drop_now() {
            Ok(true) => {
                tracing::info!(ip = %self.cidr(), dev = %self.device, "dropped the master IP");
            }
            // Not there: the usual case on a follower.
            Ok(false) => {}
            Err(e) => tracing::warn!("cannot drop the master IP {}: {e}", self.cidr()),
        }
    }

    /// Removes the address if this host holds it: whether it did. Also `gantry master-ip
    /// drop`, which systemd runs after a master's process ended however it ended
    /// (`ExecStopPost`): a master that died on a live host does not keep the address.
    pub fn drop_now(&self) -> Result<bool, String> {
        let out = Command::new("ip")
            .args(["address", "del", &self.cidr(), "dev", &self.device])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run `ip`: {e}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            Ok(true)
        } else if stderr.contains("Address not found") || stderr.contains("Cannot assign") {
            // Not there (iproute2's words: today's, and older releases').
            Ok(false)
        } else {
            Err(stderr.trim().to_string())
        }
    }

    /// Whether another host answers ARP for the address (duplicate address detection). Without
    /// `arping` nobody can tell: the address is taken regardless, with a warning.
    async fn held_elsewhere(&self) -> bool {
        let out = tokio::process::Command::new("arping")
            .args(["-D", "-q", "-c", "2", "-w", "2", "-I", &self.device])
            .arg(self.ip.to_string())
            .stdin(Stdio::null())
            .output()
            .await;
        match out {
            // iputils arping -D: 0 when nobody answered, 1 when someone did.
            Ok(o) => o.status.code() == Some(1),
            Err(e) => {
                tracing::warn!("cannot run arping ({e}): taking the master IP unchecked");
                false
            }
        }
    }

    /// Adds the address once no other host holds it, then announces it (gratuitous ARP, so
    /// neighbours forget the previous holder's hardware address at once).
    pub async fn take(&self) {
        let attempt = || async {
            if self.held_elsewhere().await {
                return Err(format!(
                    "{} answers from another host (a previous leader's host still holds it)",
                    self.ip
                ));
            }
            let out = tokio::process::Command::new("ip")
                .args(["address", "add", &self.cidr(), "dev", &self.device])
                .stdin(Stdio::null())
                .output()
                .await
                .map_err(|e| format!("cannot run `ip`: {e}"))?;
            if !out.status.success() {
                return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
            }
            Ok(())
        };
        let taken = attempt
            .retry(
                ConstantBuilder::default()
                    .with_delay(Duration::from_secs(2))
                    .without_max_times(),
            )
            .notify(|e, _| tracing::warn!("cannot take the master IP yet: {e}; trying again"))
            .await;
        if taken.is_ok() {
            tracing::info!(ip = %self.cidr(), dev = %self.device, "this master holds the master IP");
            let announce = tokio::process::Command::new("arping")
                .args(["-q", "-U", "-c", "3", "-I", &self.device, "-s"])
                .args([self.ip.to_string(), self.ip.to_string()])
                .stdin(Stdio::null())
                .status()
                .await;
            if let Err(e) = announce {
                tracing::warn!("cannot announce the master IP (arping: {e})");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::MasterIp;

    #[test]
    fn parses_addresses_and_devices() {
        let ip = MasterIp::parse("10.0.0.5/24", "eth0").unwrap();
        assert_eq!(ip.cidr(), "10.0.0.5/24");
        assert_eq!(
            MasterIp::parse("10.0.0.5", "br0").unwrap().cidr(),
            "10.0.0.5/32"
        );
        for (address, device) in [
            ("10.0.0.5/33", "eth0"),
            ("fe80::1/64", "eth0"),
            ("10.0.0.5/24", "-f"),
            ("10.0.0.5/24", "a-name-far-too-long"),
            ("10.0.0.5/24", "eth0; reboot"),
            ("10.0.0.5/24", ""),
        ] {
            assert!(
                MasterIp::parse(address, device).is_err(),
                "{address} {device}"
            );
        }
    }
}
