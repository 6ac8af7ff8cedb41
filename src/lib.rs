//! rootfs-mount: the merged build directory of a sealer base ClusterImage, served over
//! FUSE as a union of layers, with templated files rendered on read.
//!
//! Core (no FUSE): [`archive`], [`layers`], [`tree`], [`versions`], [`sealer`], [`render`],
//! [`layout`]; the tree without a mount: [`pack`] (`render`, `tree`, `pack`) and [`check`].
//! Adapter: [`fuse`]. Lifecycle: [`daemon`] (the running daemon), [`mounts`] (the mount
//! table, mountpoint checks, `status`, `umount`), [`scratch`] (the scratch upper layer),
//! [`state`] (state files). Registry
//! images (pulled over the OCI distribution API): [`oci`]. A cache held in an object store
//! (S3, an HTTP mirror), read by range through a verified local block cache: [`remote`].
//! All `unsafe` code is in `sys`:
//! the compiler refuses it anywhere else.
#![deny(unsafe_code)]

pub mod archive;
pub mod check;
pub mod daemon;
pub mod fault;
pub mod fetch;
pub mod fuse;
pub mod host_idle;
pub mod layers;
pub mod layout;
pub mod logging;
pub mod mount_vars;
pub mod mounts;
pub mod notify;
pub mod oci;
pub mod pack;
pub mod remote;
pub mod render;
pub mod scratch;
pub mod sealer;
pub mod sources;
pub mod state;
pub mod sums;
#[allow(unsafe_code)]
pub mod sys;
#[cfg(test)]
pub(crate) mod test_support;
pub mod tree;
pub mod upper;
pub mod values;
pub mod versions;

/// `contexts/` compiled into the binary by `build.rs`.
pub mod embedded_contexts {
    /// One file of `contexts/`.
    #[derive(Debug)]
    pub struct EmbeddedFile {
        pub path: &'static str,
        pub data: &'static [u8],
        pub mode: u32,
        pub link: Option<&'static str>,
    }

    include!(concat!(env!("OUT_DIR"), "/embedded_contexts.rs"));
}
