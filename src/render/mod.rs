//! Build-time rendering: the template language (docs/TEMPLATES.md). The variables a
//! mount renders with are `crate::mount_vars`'s.

pub mod template;

pub use template::{quote, render, render_bounded, TemplateError, Value, Vars};
