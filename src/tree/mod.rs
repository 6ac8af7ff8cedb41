//! The merged build tree: a stack of layers resolved by path, with inode numbers, open
//! files and folder listings. This is the filesystem without FUSE: the adapter in
//! `crate::fuse` only translates requests into these calls.
//!
//! [`MergedTree`] (`merged`, `write`) is a facade over parts that each own their state:
//! `namespace` (what a path resolves to) and `inodes` (numbers and lookup counts),
//! `handles` (the open-file table and the one read of opened content), `copy_up` (the
//! upper folder's copies, one path at a time) and `changes` (which resolved nodes a
//! change made stale, by folder).

mod changes;
mod copy_up;
mod error;
mod handles;
mod inodes;
mod merged;
mod names;
mod namespace;
mod packed;
mod write;

pub use error::FsError;
pub use inodes::{InodeTable, ROOT_INO};
pub use merged::{DirItem, MergedTree, Opened};
pub use namespace::{Branch, BranchSet, InUpper, Namespace, Node};
pub use write::{AttrChange, Caller, RENAME_NOREPLACE};
