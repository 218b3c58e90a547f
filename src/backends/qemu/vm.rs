//! One QEMU process: its command line, launch (ready once QMP answers), and the stop sequence
//! Ganeti's `timeout` describes: ACPI powerdown, then `quit`, then SIGKILL.

use super::qmp::{Qmp, QmpError};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use thiserror::Error;
use tokio::process::{Child, Command};

#[derive(Debug, Error)]
pub enum VmError {
    #[error("{0}")]
    Launch(String),
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("{0}")]
    Io(String),
}

/// What a VM is started with. Disks are qcow2 files, attached as virtio-blk.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VmConfig {
    pub name: String,
    /// Short directory for sockets, pidfile and logs (unix socket paths must stay < 108 bytes).
    pub run_dir: PathBuf,
    pub memory_mib: u64,
    pub vcpus: u32,
    /// Disk images; `.qcow2` files are qcow2, anything else raw.
    pub disks: Vec<PathBuf>,
    /// One virtio NIC per MAC.
    pub macs: Vec<String>,
    /// The NICs' host side (same order as `macs`): a tap each. Empty: user-mode networking for
    /// every NIC (`--user-networking`, and records written before taps).
    #[serde(default)]
    pub net: Vec<super::net::HostNic>,
    /// Where the serial console's output is kept (appended): next to the disks, so it outlives
    /// the QEMU process. None: in the run dir (records written before it was kept).
    #[serde(default)]
    pub console_log: Option<PathBuf>,
    /// Direct kernel boot (hvparam `kernel_path`...); None boots from the first disk.
    #[serde(default)]
    pub boot: Option<crate::backends::KernelBoot>,
    /// `tcg` unless asked otherwise: nested KVM on these machines hangs Linux guests.
    pub accel: String,
    /// The versioned machine type (`probe.rs`); records written before it was chosen used
    /// QEMU 10's.
    #[serde(default = "machine_of_old_records")]
    pub machine: String,
    /// `-incoming` URI for a migration target.
    pub incoming: Option<String>,
}

fn machine_of_old_records() -> String {
    "pc-i440fx-10.0".into()
}

impl VmConfig {
    pub fn qmp_socket(&self) -> PathBuf {
        self.run_dir.join("qmp.sock")
    }

    pub fn serial_socket(&self) -> PathBuf {
        self.run_dir.join("serial.sock")
    }

    pub fn pidfile(&self) -> PathBuf {
        self.run_dir.join("pid")
    }

    pub fn console_log(&self) -> PathBuf {
        self.console_log
            .clone()
            .unwrap_or_else(|| self.run_dir.join("console.log"))
    }

    pub fn log(&self) -> PathBuf {
        self.run_dir.join("qemu.log")
    }

    /// The full argument list; kept identical on both sides of a migration.
    pub fn args(&self) -> Vec<String> {
        let dir = |p: PathBuf| p.display().to_string();
        let mut args: Vec<String> = vec![
            "-name".into(),
            self.name.clone(),
            "-machine".into(),
            self.machine.clone(),
            "-accel".into(),
            self.accel.clone(),
            "-m".into(),
            self.memory_mib.to_string(),
            "-smp".into(),
            self.vcpus.to_string(),
            "-nodefaults".into(),
            "-nographic".into(),
            "-display".into(),
            "none".into(),
            "-no-shutdown".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", dir(self.qmp_socket())),
            "-chardev".into(),
            format!(
                "socket,id=ser0,path={},server=on,wait=off,logfile={},logappend=on",
                dir(self.serial_socket()),
                dir(self.console_log())
            ),
            "-serial".into(),
            "chardev:ser0".into(),
            "-pidfile".into(),
            dir(self.pidfile()),
        ];
        for (n, disk) in self.disks.iter().enumerate() {
            args.push("-blockdev".into());
            args.push(format!(
                "driver=file,filename={},node-name=disk{n}-file",
                disk.display()
            ));
            args.push("-blockdev".into());
            let format = if disk.extension().is_some_and(|e| e == "qcow2") {
                "qcow2"
            } else {
                "raw"
            };
            args.push(format!(
                "driver={format},file=disk{n}-file,node-name=disk{n}"
            ));
            args.push("-device".into());
            args.push(format!(
                "virtio-blk-pci,drive=disk{n},id=disk{n},addr={}",
                disk_slot(n)
            ));
        }
        if let Some(boot) = &self.boot {
            args.extend(["-kernel".into(), boot.kernel.clone()]);
            if let Some(initrd) = &boot.initrd {
                args.extend(["-initrd".into(), initrd.clone()]);
            }
            args.extend(["-append".into(), boot.append.clone()]);
        }
        for (n, mac) in self.macs.iter().enumerate() {
            args.push("-netdev".into());
            args.push(match self.net.get(n) {
                Some(nic) => format!("tap,id=net{n},ifname={},script=no,downscript=no", nic.tap),
                None => format!("user,id=net{n}"),
            });
            args.push("-device".into());
            args.push(format!(
                "virtio-net-pci,netdev=net{n},mac={mac},id=nic{n},addr={:#x}",
                0x08 + n
            ));
        }
        if let Some(uri) = &self.incoming {
            args.push("-incoming".into());
            args.push(uri.clone());
        }
        args
    }
}

/// Fixed PCI slots (NICs from 0x08, disks from 0x10): a disk hot-added later sits where a fresh
/// QEMU with the same disks would put it, so migration targets match their source.
pub fn disk_slot(index: usize) -> String {
    format!("{:#x}", 0x10 + index)
}

pub struct Vm {
    pub config: VmConfig,
    pub qmp: Qmp,
    pid: u32,
    /// Set when this process started QEMU; an adopted VM (after a gantry restart) has none.
    child: tokio::sync::Mutex<Option<Child>>,
}

pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The last lines of QEMU's log, for error messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl Vm {
    /// Starts QEMU as a child in its own process group and waits until QMP answers. If QEMU
    /// exits first, the error carries the tail of its log.
    pub async fn launch(binary: &Path, config: VmConfig) -> Result<Vm, VmError> {
        std::fs::create_dir_all(&config.run_dir)
            .map_err(|e| VmError::Io(format!("{}: {e}", config.run_dir.display())))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(config.log())
            .map_err(|e| VmError::Io(e.to_string()))?;
        let log_err = log.try_clone().map_err(|e| VmError::Io(e.to_string()))?;
        let mut child = Command::new(binary)
            .args(config.args())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| VmError::Launch(format!("cannot run {}: {e}", binary.display())))?;
        let socket = config.qmp_socket();
        let connect = Qmp::connect(&socket, START_TIMEOUT);
        let failure = tokio::select! {
            qmp = connect => match qmp {
                Ok(qmp) => {
                    let pid = child.id().unwrap_or(0);
                    let child = tokio::sync::Mutex::new(Some(child));
                    return Ok(Vm { config, qmp, pid, child });
                }
                Err(e) => e,
            },
            _ = child.wait() => QmpError::Closed,
        };
        // QEMU usually dies on bad arguments while we connect; report its exit and its words.
        let exited = match tokio::time::timeout(Duration::from_secs(1), child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                let _ = child.kill().await;
                None
            }
        };
        let log = log_tail(&config.log());
        Err(VmError::Launch(match exited {
            Some(status) => format!("QEMU exited at start ({status}): {log}"),
            None => format!("QEMU did not answer on QMP ({failure}): {log}"),
        }))
    }

    /// Re-attaches to a QEMU started by an earlier gantry process: alive if the pidfile names a
    /// live process that still runs with our QMP socket, and QMP answers.
    pub async fn adopt(config: VmConfig) -> Option<Vm> {
        let pid: u32 = std::fs::read_to_string(config.pidfile())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let socket = config.qmp_socket().display().to_string();
        if !String::from_utf8_lossy(&cmdline).contains(&socket) {
            return None;
        }
        let qmp = Qmp::connect(&config.qmp_socket(), Duration::from_secs(5))
            .await
            .ok()?;
        Some(Vm {
            config,
            qmp,
            pid,
            child: tokio::sync::Mutex::new(None),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits for the process to be gone; SIGKILL after `grace`.
    pub async fn reap(&self, grace: Duration) {
        match &mut *self.child.lock().await {
            Some(child) => {
                if tokio::time::timeout(grace, child.wait()).await.is_err() {
                    let _ = child.kill().await;
                }
            }
            None => {
                let proc = format!("/proc/{}", self.pid);
                let deadline = tokio::time::Instant::now() + grace;
                while Path::new(&proc).exists() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if Path::new(&proc).exists() {
                    // SAFETY: kill(2) with a pid we read from QEMU's own pidfile.
                    unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
                }
            }
        }
    }

    /// QMP `query-status`: "running", "paused", "shutdown", ...
    pub async fn status(&self) -> Result<String, VmError> {
        let status = self.qmp.execute("query-status", Value::Null).await?;
        Ok(status["status"].as_str().unwrap_or("unknown").to_string())
    }

    /// ACPI powerdown, waiting up to `timeout` for the guest; then `quit`; then SIGKILL. Answers
    /// true when the guest shut down by itself.
    pub async fn stop(&self, timeout: Duration) -> Result<bool, VmError> {
        let mut events = self.qmp.events();
        let mut clean = false;
        if !timeout.is_zero()
            && self
                .qmp
                .execute("system_powerdown", Value::Null)
                .await
                .is_ok()
        {
            clean = Qmp::wait_event(&mut events, |e| e.name == "SHUTDOWN", timeout)
                .await
                .is_some();
        }
        let _ = self
            .qmp
            .execute_within("quit", Value::Null, Duration::from_secs(5))
            .await;
        self.reap(Duration::from_secs(5)).await;
        Ok(clean)
    }

    /// Grows a disk while the VM runs (`block_resize`).
    pub async fn resize_disk(&self, index: usize, bytes: u64) -> Result<(), VmError> {
        self.qmp
            .execute(
                "block_resize",
                json!({"node-name": format!("disk{index}"), "size": bytes}),
            )
            .await?;
        Ok(())
    }
}

/// `qemu-img create -f qcow2 PATH SIZE`.
pub async fn create_disk(qemu_img: &Path, path: &Path, size_mib: u64) -> Result<(), VmError> {
    let out = Command::new(qemu_img)
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(format!("{size_mib}M"))
        .output()
        .await
        .map_err(|e| VmError::Launch(format!("cannot run {}: {e}", qemu_img.display())))?;
    if !out.status.success() {
        return Err(VmError::Launch(format!(
            "qemu-img create failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}
