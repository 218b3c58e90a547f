//! `plain` disks on LVM (issue 13): a volume group on a loop device made by the test, the
//! cluster's `vg_name` pointed at it; an instance's disks are volumes tagged with its UUID,
//! grown with `lvextend`, removed with it; no volume is left.
//!
//! Needs the kernel's device-mapper. Where it is missing (some container and microVM kernels,
//! this project's CI machine among them: no /dev/mapper/control driver) the test says so and
//! skips, even in CI: no setting of ours can provide a kernel driver.

mod common;
use common::*;
use serde_json::json;
use std::process::Command;

fn run(tool: &str, args: &[&str]) -> std::process::Output {
    Command::new(tool)
        .args(args)
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e} (apt-get install lvm2)"))
}

fn device_mapper_works() -> bool {
    Command::new("dmsetup")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("Driver"))
}

/// A loop device holding a volume group; all of it is undone when dropped.
struct LoopVg {
    device: String,
    vg: String,
    _file: tempfile::NamedTempFile,
}

impl LoopVg {
    fn new() -> LoopVg {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(512 << 20).unwrap();
        let out = run("losetup", &["-f", "--show", file.path().to_str().unwrap()]);
        assert!(out.status.success(), "losetup: {out:?}");
        let device = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let vg = format!("gantrytest{}", std::process::id());
        for (tool, args) in [
            ("pvcreate", vec![device.as_str()]),
            ("vgcreate", vec![&vg, &device]),
        ] {
            let out = run(tool, &args);
            assert!(out.status.success(), "{tool}: {out:?}");
        }
        LoopVg {
            device,
            vg,
            _file: file,
        }
    }

    fn volumes(&self) -> Vec<(String, String, String)> {
        let out = run(
            "lvs",
            &[
                "--noheadings",
                "--units",
                "m",
                "--nosuffix",
                "-o",
                "lv_name,lv_size,lv_tags",
                &self.vg,
            ],
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((
                    f.next()?.into(),
                    f.next()?.into(),
                    f.next().unwrap_or("").into(),
                ))
            })
            .collect()
    }
}

impl Drop for LoopVg {
    fn drop(&mut self) {
        let _ = run("vgremove", &["--yes", "-f", &self.vg]);
        let _ = run("pvremove", &["--yes", &self.device]);
        let _ = run("losetup", &["-d", &self.device]);
    }
}

#[test]
fn a_plain_instance_lives_on_volumes_that_grow_and_go_with_it() {
    if !have_qemu() {
        return;
    }
    if !device_mapper_works() {
        eprintln!("SKIPPED: this kernel has no device-mapper (dmsetup version has no driver)");
        return;
    }
    let vg = LoopVg::new();
    let run_dir = short_tempdir("gl");
    let _cleanup = KillVms(run_dir.path().to_path_buf());
    let s = start_kvm(run_dir.path());
    job_ok(&s, "PUT", "/2/modify", json!({"vg_name": vg.vg}));
    job_ok(
        &s,
        "POST",
        "/2/instances",
        json!({"__version__": 1, "mode": "create", "name": "lv1.example.com",
               "disk_template": "plain", "disks": [{"size": 64}, {"size": 32}], "nics": [],
               "os_type": "gantry-demo+default", "start": false,
               "pnode": "node1.example.com"}),
    );
    let (_, inst) = curl(&s, "GET", "/2/instances/lv1.example.com", None, None);
    let uuid = inst["uuid"].as_str().unwrap().to_string();
    let volumes = vg.volumes();
    assert_eq!(volumes.len(), 2, "{volumes:?}");
    assert!(
        volumes.iter().all(|(_, _, tags)| tags.contains(&uuid)),
        "{volumes:?}"
    );
    // The OS wrote its file system on the first volume.
    let first = inst["disk.uuids"][0].as_str().unwrap().to_string();
    let label = run(
        "blkid",
        &[
            "-s",
            "LABEL",
            "-o",
            "value",
            &format!("/dev/{}/{first}", vg.vg),
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&label.stdout).trim(),
        "lv1.example.com"
    );

    job_ok(
        &s,
        "POST",
        "/2/instances/lv1.example.com/disk/0/grow",
        json!({"amount": 32}),
    );
    let size = vg
        .volumes()
        .into_iter()
        .find(|(name, _, _)| *name == first)
        .map(|(_, size, _)| size.parse::<f64>().unwrap())
        .unwrap();
    assert_eq!(size, 96.0);

    job_ok(&s, "DELETE", "/2/instances/lv1.example.com", json!({}));
    assert_eq!(vg.volumes(), vec![], "no volume left");
}
