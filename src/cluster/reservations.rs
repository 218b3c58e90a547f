//! Temporary reservations (upstream WConfd's): a job that is about to use a MAC or an IP claims
//! it here first, atomically against the newest configuration and every other job's claims, so
//! two jobs running in parallel (creates on different nodes take different locks) can never
//! both get it. Claims end when the job's opcode ends; by then a successful one is in the
//! configuration itself.

use super::addresses::{contains, free_address, is_taken};
use super::model::Config;
use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct Reservations {
    /// MAC → job.
    macs: HashMap<String, u64>,
    /// (network uuid, address) → job.
    ips: HashMap<(String, String), u64>,
}

/// Why a claim was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Conflict {
    MacInUse(String),
    IpInUse(String, String),
    PoolExhausted(String),
    UnknownNetwork(String),
}

impl Reservations {
    /// Claims `mac` for `job` unless an instance or another job has it.
    pub fn reserve_mac(&mut self, cfg: &Config, job: u64, mac: &str) -> Result<(), Conflict> {
        let in_config = cfg
            .instances
            .values()
            .any(|i| i.nics.iter().any(|n| n.mac == mac));
        let other_job = self.macs.get(mac).is_some_and(|j| *j != job);
        if in_config || other_job {
            return Err(Conflict::MacInUse(mac.to_string()));
        }
        self.macs.insert(mac.to_string(), job);
        Ok(())
    }

    /// Claims an address of network `net` for `job`: `wanted`, or the lowest free one of the
    /// pool when `None`. Answers the address.
    pub fn reserve_ip(
        &mut self,
        cfg: &Config,
        job: u64,
        net: &str,
        wanted: Option<&str>,
    ) -> Result<String, Conflict> {
        let network = cfg
            .networks
            .get(net)
            .ok_or_else(|| Conflict::UnknownNetwork(net.to_string()))?;
        let claimed = |ip: &str| {
            self.ips
                .get(&(net.to_string(), ip.to_string()))
                .is_some_and(|j| *j != job)
        };
        let ip = match wanted {
            Some(ip) => {
                if is_taken(network, ip) || claimed(ip) || !contains(network, ip) {
                    return Err(Conflict::IpInUse(ip.to_string(), network.name.clone()));
                }
                ip.to_string()
            }
            None => free_address(network, claimed)
                .ok_or_else(|| Conflict::PoolExhausted(network.name.clone()))?,
        };
        self.ips.insert((net.to_string(), ip.clone()), job);
        Ok(ip)
    }

    /// Ends every claim of `job`.
    pub fn release(&mut self, job: u64) {
        self.macs.retain(|_, j| *j != job);
        self.ips.retain(|_, j| *j != job);
    }
}
