//! The merged build tree: a stack of layers resolved by path, with inode numbers, open
//! files and folder listings. This is the filesystem without FUSE: the adapter in
//! `crate::fuse` only translates requests into these calls.

mod error;
mod inodes;
mod merged;
mod namespace;
mod write;

pub use error::FsError;
pub use inodes::{InodeTable, ROOT_INO};
pub use merged::{DirItem, MergedTree, Opened};
pub use namespace::{Branch, InUpper, Namespace, Node};
pub use write::{AttrChange, Caller, RENAME_NOREPLACE};
