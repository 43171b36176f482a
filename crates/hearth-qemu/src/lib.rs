//! hearth's QEMU driver: `qemu-system-<arch>` run directly, controlled over QMP, with a qcow2
//! overlay, a NoCloud seed and a serial console log per VM under one root directory.

pub mod accel;
pub mod backup;
pub mod disk;
pub mod driver;
mod error;
pub mod fake;
mod files;
pub mod guard;
pub mod last_backup;
pub mod live;
pub mod moving;
pub mod qmp;
pub mod rbd;
pub mod replica;
pub mod seed;
pub mod stats;
pub mod tap;
