//! The QEMU backend's building blocks (issue 3, in progress): a QMP client and single-VM process
//! control. Not yet wired to the `Backend` trait or selectable by `enabled_hypervisors`.

pub mod qmp;
pub mod vm;
