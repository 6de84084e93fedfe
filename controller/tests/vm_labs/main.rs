//! The VM labs, one binary: QEMU guests with their own kernels
//! (`vm_lab`), and whole Debian systems installed the way users install
//! them (`debian_lab`). Their guests take a core each, so they have a
//! binary of their own (cargo runs test binaries one at a time) and take
//! turns within it (`common::lab_turn`).

#[path = "../common/mod.rs"]
mod common;

mod debian_lab;
mod vm_lab;
