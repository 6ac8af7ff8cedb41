//! A context layer: `X.in` templates are shown rendered as `X`, everything else as is.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::{read_all, Child, Content, EntryKind, Layer, LayerEntry, Source};
use crate::render::{render_bounded, TemplateError, Vars};

const SUFFIX: &[u8] = b".in";

/// Templates are rendered into memory whole: a config template is kilobytes, so a
/// bigger one is a mistake (or hostile) and refuses the mount instead of eating memory.
pub const MAX_TEMPLATE_BYTES: u64 = 16 << 20;

/// One rendering may take at most this much memory: templates expand (`@{kube_images}`
/// is a list), so the template's own size bounds nothing.
pub const MAX_RENDERED_BYTES: usize = 32 << 20;
/// All renderings of a mount together (every context layer shares one [`RenderBudget`]).
pub const MAX_RENDERED_TOTAL: usize = 128 << 20;

/// The memory the renderings of one mount take, against [`MAX_RENDERED_TOTAL`].
#[derive(Debug)]
pub struct RenderBudget {
    used: Mutex<usize>,
    per_rendering: usize,
    total: usize,
}

impl Default for RenderBudget {
    fn default() -> Self {
        RenderBudget::with_limits(MAX_RENDERED_BYTES, MAX_RENDERED_TOTAL)
    }
}

impl RenderBudget {
    pub fn with_limits(per_rendering: usize, total: usize) -> Self {
        RenderBudget {
            used: Mutex::new(0),
            per_rendering,
            total,
        }
    }

    /// Takes `new` bytes for a rendering that replaces one of `old` bytes.
    fn take(&self, new: usize, old: usize) -> Result<(), String> {
        if new > self.per_rendering {
            return Err(format!(
                "renders to more than {} MiB ({new} bytes); renderings are kept in memory",
                self.per_rendering >> 20
            ));
        }
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let after = used.saturating_sub(old).saturating_add(new);
        if after > self.total {
            return Err(format!(
                "the renderings of this mount would take more than {} MiB in total; renderings are kept in memory",
                self.total >> 20
            ));
        }
        *used = after;
        Ok(())
    }
}

/// A rendering, remembered with the identity of the template it came from so that an
/// edited on-disk template is rendered again.
struct Rendering {
    stamp: (u64, SystemTime),
    bytes: Arc<[u8]>,
}

pub struct TemplatedTree {
    inner: Box<dyn Layer>,
    vars: Arc<Vars>,
    cache: Mutex<HashMap<PathBuf, Rendering>>,
    budget: Arc<RenderBudget>,
    /// The template version (size, mtime) whose render error was logged last, so that
    /// a broken template is one WARN line, not one per read.
    warned: Mutex<HashMap<PathBuf, (u64, SystemTime)>>,
}

impl std::fmt::Debug for TemplatedTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemplatedTree")
            .field("inner", &self.inner)
            .finish()
    }
}

fn template_name(rel: &Path) -> PathBuf {
    let mut name = rel.as_os_str().to_os_string();
    name.push(".in");
    PathBuf::from(name)
}

fn is_template(rel: &Path) -> bool {
    rel.file_name()
        .map(|n| n.as_bytes().ends_with(SUFFIX) && n.len() > SUFFIX.len())
        .unwrap_or(false)
}

/// The name a template file is shown under, as a file label for error messages.
fn label(source: &Source) -> String {
    match source {
        Source::Embedded(p) => format!("contexts/{p}"),
        other => other.to_string(),
    }
}

impl TemplatedTree {
    /// A templated layer whose renderings count against `budget` (one per mount).
    pub fn new(inner: Box<dyn Layer>, vars: Arc<Vars>, budget: Arc<RenderBudget>) -> Self {
        TemplatedTree {
            inner,
            vars,
            cache: Mutex::new(HashMap::new()),
            budget,
            warned: Mutex::new(HashMap::new()),
        }
    }

    /// Renders every template of the layer once, so that a broken template refuses
    /// the mount (with `file:line`) instead of failing a read later.
    pub fn check_all(&self) -> Result<(), String> {
        let mut pending = vec![PathBuf::new()];
        while let Some(dir) = pending.pop() {
            let children = self
                .inner
                .children(&dir)
                .map_err(|e| format!("reading {}: {e}", dir.display()))?;
            for child in children {
                let rel = dir.join(&child.name);
                match child.kind {
                    EntryKind::Dir => pending.push(rel),
                    EntryKind::File if is_template(&rel) => {
                        if let Some(template) = self.inner.entry(&rel).map_err(|e| e.to_string())? {
                            // Kept (and counted), as the first lookup would keep it.
                            self.render_and_keep(&rel, &template)
                                .map_err(|e| e.to_string())?;
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn render_fresh(&self, template: &LayerEntry) -> Result<Vec<u8>, TemplateError> {
        let file = label(&template.source);
        if template.size > MAX_TEMPLATE_BYTES {
            return Err(TemplateError {
                file,
                line: 0,
                message: format!(
                    "template is {} bytes; build-time templates are limited to {} MiB",
                    template.size,
                    MAX_TEMPLATE_BYTES >> 20
                ),
            });
        }
        let src = read_all(template).map_err(|e| TemplateError {
            file: file.clone(),
            line: 0,
            message: e.to_string(),
        })?;
        render_bounded(&file, &src, &self.vars, self.budget.per_rendering)
    }

    /// The rendering of `template` (at `rel`), from the cache while the template is
    /// unchanged, else rendered, counted against the budget and kept.
    fn render_and_keep(
        &self,
        rel: &Path,
        template: &LayerEntry,
    ) -> Result<Arc<[u8]>, TemplateError> {
        let stamp = (template.size, template.mtime);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let old = match cache.get(rel) {
            Some(r) if r.stamp == stamp => return Ok(r.bytes.clone()),
            Some(r) => r.bytes.len(),
            None => 0,
        };
        let bytes = self.render_fresh(template)?;
        self.budget
            .take(bytes.len(), old)
            .map_err(|message| TemplateError {
                file: label(&template.source),
                line: 0,
                message,
            })?;
        let bytes: Arc<[u8]> = Arc::from(bytes);
        cache.insert(
            rel.to_path_buf(),
            Rendering {
                stamp,
                bytes: bytes.clone(),
            },
        );
        Ok(bytes)
    }

    /// The rendering of `template` (at `rel`), from the cache while the template is
    /// unchanged. A template edited into an error keeps its last good rendering.
    fn rendered(&self, rel: &Path, template: &LayerEntry) -> io::Result<Arc<[u8]>> {
        let stamp = (template.size, template.mtime);
        match self.render_and_keep(rel, template) {
            Ok(bytes) => Ok(bytes),
            Err(e) => {
                let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
                let first = warned.insert(rel.to_path_buf(), stamp) != Some(stamp);
                match self
                    .cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(rel)
                {
                    Some(last) => {
                        if first {
                            tracing::warn!(target: crate::fault::TARGET, file = %e.file, error = %e, "template no longer renders; serving its last good rendering");
                        }
                        Ok(last.bytes.clone())
                    }
                    None => {
                        if first {
                            tracing::warn!(target: crate::fault::TARGET, file = %e.file, error = %e, "template does not render");
                        }
                        Err(io::Error::from_raw_os_error(libc::EIO))
                    }
                }
            }
        }
    }
}

impl Layer for TemplatedTree {
    fn entry(&self, rel: &Path) -> io::Result<Option<LayerEntry>> {
        if rel.as_os_str().is_empty() {
            return self.inner.entry(rel);
        }
        if is_template(rel) {
            return Ok(None);
        }
        let template_rel = template_name(rel);
        match self.inner.entry(&template_rel)? {
            Some(template) if template.kind == EntryKind::File => {
                let bytes = self.rendered(&template_rel, &template)?;
                Ok(Some(LayerEntry {
                    kind: EntryKind::File,
                    perm: template.perm,
                    size: bytes.len() as u64,
                    mtime: template.mtime,
                    ctime: None,
                    nlink: None,
                    uid: template.uid,
                    gid: template.gid,
                    content: Content::Bytes(bytes),
                    source: Source::Rendered(Box::new(template.source)),
                }))
            }
            _ => self.inner.entry(rel),
        }
    }

    fn children(&self, rel: &Path) -> io::Result<Vec<Child>> {
        let mut out: Vec<Child> = Vec::new();
        for child in self.inner.children(rel)? {
            let bytes = child.name.as_bytes();
            let child = if child.kind == EntryKind::File && is_template(Path::new(&child.name)) {
                Child {
                    name: OsString::from_vec(bytes[..bytes.len() - SUFFIX.len()].to_vec()),
                    kind: EntryKind::File,
                }
            } else {
                child
            };
            // A template and a plain file of the same name show once (the rendering).
            if let Some(existing) = out.iter_mut().find(|c| c.name == child.name) {
                existing.kind = EntryKind::File;
            } else {
                out.push(child);
            }
        }
        Ok(out)
    }

    fn is_mutable(&self) -> bool {
        self.inner.is_mutable()
    }
}
