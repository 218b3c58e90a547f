//! The `kvm` hypervisor: QEMU processes driven over QMP (no libvirt), Ganeti OS definitions for
//! installs, and the `Backend` implementation that ties them together.

pub mod backend;
pub mod lvm;
pub mod net;
pub mod os;
pub mod probe;
pub mod qmp;
pub mod vm;

pub use backend::{QemuBackend, QemuSettings, short_id};
