//! The build directory of docs/DESIGN.md §2, as layers mounted into the tree: which context, cache
//! folder or file appears where, and what must exist before a mount may start.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::archive::IndexStore;
use crate::layers::{
    embedded_file, CacheObjects, DiskTree, EmbeddedTree, EmptyDir, GunzippedFile, Layer,
    RenderBudget, TarballMembers, TemplatedTree,
};
use crate::mount_vars::template_vars;
use crate::remote::layer::RemoteTree;
use crate::remote::{RemoteCache, RemoteOptions};
use crate::sealer::SealerFacts;
use crate::sources::{CacheEntry, Sources};
use crate::tree::{Branch, Namespace};
use crate::values::{template_value, variable_name, Effective, ValueSpecs, Values};
use crate::versions::{KubeVersion, Profile, VersionFacts};

/// Architectures a build directory can hold (sealer's platforms).
pub const KNOWN_ARCHES: &[&str] = &["amd64", "arm64"];

/// The kube binaries taken from `kube/<version>/<arch>/`.
const KUBE_BINARIES: &[&str] = &["kubeadm", "kubectl", "kubelet"];

/// The cache entries a build of `profile` for `arches` is made from: the one answer to
/// "what does this mount need", used by the mount's check for missing entries and by
/// `fetch`, so the two can never disagree. Entries with `required == false` are filled
/// when a source has them but never refuse a mount.
pub fn cache_entries(
    sources: &Sources,
    profile: &Profile,
    arches: &[String],
) -> Result<Vec<CacheEntry>, String> {
    sources.entries(profile, arches)
}

/// Reads `versions.yaml` and `sources.yaml` from the embedded contexts or `--contexts DIR`.
pub fn load_facts(contexts: Option<&Path>) -> Result<(VersionFacts, Sources), String> {
    let contexts = match contexts {
        None => Contexts::Embedded,
        Some(dir) => Contexts::Disk(dir),
    };
    Ok((
        contexts.data("versions.yaml", VersionFacts::parse)?,
        contexts.data("sources.yaml", Sources::parse)?,
    ))
}

/// The images of the rendered `rootfs/imageList` of a mount of `params`: what
/// `fetch --images` pulls into the registry data, so the two never disagree.
pub fn image_list(params: &MountParams) -> Result<Vec<String>, String> {
    let params = MountParams {
        allow_missing: true,
        ..params.clone()
    };
    let layout = plan(&params)?;
    let node = layout
        .namespace
        .resolve_path(Path::new("rootfs/imageList"))
        .map_err(|e| format!("rootfs/imageList: {e}"))?
        .ok_or("the contexts render no rootfs/imageList")?;
    let bytes = match node.entry.content {
        crate::layers::Content::Bytes(b) => b.to_vec(),
        other => return Err(format!("rootfs/imageList is not rendered text: {other:?}")),
    };
    Ok(String::from_utf8_lossy(&bytes)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// The command that fills the cache for a mount of `params` resolved to `profile`.
pub fn fetch_command(params: &MountParams, profile: &Profile) -> String {
    let mut cmd = format!(
        "rootfs-mount fetch --k8s {} --cri {} --arch {} --cache {}",
        profile.version,
        profile.cri,
        params.arches.join(","),
        shell_quote(&params.cache.to_string_lossy())
    );
    if let Some(dir) = &params.contexts {
        cmd.push_str(&format!(
            " --contexts {}",
            shell_quote(&dir.to_string_lossy())
        ));
    }
    cmd
}

/// `text` as one shell word.
pub fn shell_quote(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// Everything a mount is made from, validated by the CLI.
#[derive(Clone, Debug)]
pub struct MountParams {
    pub version: KubeVersion,
    /// `None`: the version's default CRI.
    pub cri: Option<String>,
    /// A CNI name or `none`.
    pub cni: String,
    pub arches: Vec<String>,
    pub cache: PathBuf,
    /// `None`: the contexts embedded in the binary.
    pub contexts: Option<PathBuf>,
    pub registry_domain: String,
    /// A generation of contexts/sealer.yaml; `None`: its default.
    pub sealer: Option<String>,
    /// `--values FILE` then `--set key=value`, in order (contexts/values.yaml); applied after
    /// `registry_domain`.
    pub values: Vec<(String, String)>,
    /// `None`: `CACHE/registry`.
    pub registry_data: Option<PathBuf>,
    /// `None`: `CACHE/index`.
    pub index_dir: Option<PathBuf>,
    pub allow_missing: bool,
    pub upper: Upper,
    /// The cache is in an object store (`--cache s3://...` or `https://...`); `cache`
    /// then only names it.
    pub remote: Option<RemoteOptions>,
}

/// Where changes made through the mount go (docs/DESIGN.md §8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upper {
    /// `--read-only`: every write fails with EROFS.
    None,
    /// `--upper DIR`: kept across mounts.
    Kept(PathBuf),
    /// A scratch folder made at mount and removed at unmount.
    Scratch,
}

impl MountParams {
    /// Parameters that only render the tree (`values`, `fetch --images`): nothing is read
    /// from a cache and nothing is mounted; every other field at its default.
    pub fn rendering(
        version: KubeVersion,
        cri: Option<String>,
        cni: String,
        contexts: Option<PathBuf>,
    ) -> Self {
        MountParams {
            version,
            cri,
            cni,
            arches: vec![KNOWN_ARCHES[0].to_string()],
            cache: PathBuf::from("/nonexistent/rootfs-mount-cache"),
            contexts,
            registry_domain: "sea.hub:5000".into(),
            sealer: None,
            values: Vec::new(),
            registry_data: None,
            index_dir: None,
            allow_missing: true,
            upper: Upper::None,
            remote: None,
        }
    }

    pub fn registry_dir(&self) -> PathBuf {
        self.registry_data
            .clone()
            .unwrap_or_else(|| self.cache.join("registry"))
    }

    /// Where gzip seek indexes are kept: the only folder of the cache the daemon writes.
    pub fn index_dir(&self) -> PathBuf {
        match (&self.index_dir, &self.remote) {
            (Some(dir), _) => dir.clone(),
            (None, Some(remote)) => remote.local_cache.join("index"),
            (None, None) => self.cache.join("index"),
        }
    }

    /// Folders the mount reads from (or keeps its indexes in) and never changes through
    /// the mount: a mountpoint inside one of them would be a loop, and so would an upper
    /// layer.
    pub fn source_roots(&self) -> Vec<PathBuf> {
        let mut roots = match &self.remote {
            Some(remote) => vec![remote.local_cache.clone(), self.index_dir()],
            None => vec![self.cache.clone(), self.registry_dir(), self.index_dir()],
        };
        roots.extend(self.registry_data.clone().filter(|_| self.remote.is_some()));
        roots.extend(self.contexts.clone());
        roots
    }

    /// Checks that an `--upper DIR` is not inside what the mount must never modify.
    pub fn check_upper(&self) -> Result<(), String> {
        let Upper::Kept(dir) = &self.upper else {
            return Ok(());
        };
        // Resolved as far as they exist: `LINK/new`, LINK leading into the cache, is in
        // the cache even though `new` is not there yet.
        let dir = crate::sys::resolve_existing(dir);
        for root in self.source_roots() {
            let root = crate::sys::resolve_existing(&root);
            if dir.starts_with(&root) || root.starts_with(&dir) {
                return Err(format!(
                    "--upper {} overlaps {}, which the mount must never modify",
                    dir.display(),
                    root.display()
                ));
            }
        }
        Ok(())
    }
}

/// A resolved build directory, ready to be served.
#[derive(Debug)]
pub struct BuildLayout {
    pub profile: Profile,
    pub namespace: Namespace,
    /// Required cache entries that are not there (paths relative to the cache); empty
    /// unless `allow_missing` let the plan go ahead without them.
    pub missing: Vec<String>,
    /// Everything that decides what is rendered, one `key=value` a line (`k8s=v1.23.4`,
    /// `cri=docker`, ..., `podSubnet=...`): an `--upper` folder records it
    /// (`upper::params`).
    pub parameters: String,
}

/// Where the contexts come from.
enum Contexts<'a> {
    Embedded,
    Disk(&'a Path),
}

impl Contexts<'_> {
    /// A data file at the top of the contexts, through `parse`.
    fn data<T>(&self, name: &str, parse: fn(&[u8]) -> Result<T, String>) -> Result<T, String> {
        match self {
            Contexts::Embedded => parse(
                embedded_file(name)
                    .ok_or_else(|| format!("{name} is not embedded in this build"))?,
            ),
            Contexts::Disk(dir) => {
                let path = dir.join(name);
                let bytes = crate::sys::read_regular(&path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))
            }
        }
    }

    /// The context folder `name` (`rootfs`, `cri/docker`, `cni/calico`), if it exists.
    fn layer(&self, name: &str) -> Result<Option<Box<dyn Layer>>, String> {
        match self {
            Contexts::Embedded => {
                Ok(EmbeddedTree::new(name).map(|t| Box::new(t) as Box<dyn Layer>))
            }
            Contexts::Disk(dir) => {
                let tree = DiskTree::open_in(dir, Path::new(name))
                    .map_err(|e| format!("cannot read {}: {e}", dir.join(name).display()))?;
                Ok(tree
                    .exists()
                    .then(|| Box::new(tree.mutable()) as Box<dyn Layer>))
            }
        }
    }
}

/// Checks `params` against the contexts and the cache and lays out the tree. Every
/// refusal is one line saying what is wrong and what to do.
pub fn plan(params: &MountParams) -> Result<BuildLayout, String> {
    let contexts = match &params.contexts {
        None => Contexts::Embedded,
        Some(dir) => {
            std::fs::read_dir(dir)
                .map_err(|e| format!("cannot read contexts folder {}: {e}", dir.display()))?;
            Contexts::Disk(dir)
        }
    };
    for arch in &params.arches {
        if !KNOWN_ARCHES.contains(&arch.as_str()) {
            return Err(format!(
                "unknown arch {arch:?}: expected {}",
                KNOWN_ARCHES.join(" or ")
            ));
        }
    }
    let facts = contexts.data("versions.yaml", VersionFacts::parse)?;
    let sources = contexts.data("sources.yaml", Sources::parse)?;
    let mut profile = facts.profile(&params.version, params.cri.as_deref(), &params.cni)?;
    let sealer = contexts
        .data("sealer.yaml", SealerFacts::parse)?
        .generation(params.sealer.as_deref())?;
    let values = effective_values(&contexts, params, &facts, &mut profile)?;
    let user_vars = values
        .iter()
        .map(|(key, value)| (variable_name(key), template_value(value)))
        .collect();
    let vars = Arc::new(template_vars(&profile, &sealer, user_vars));

    let mut context_layers: Vec<(String, Box<dyn Layer>)> = Vec::new();
    if let Some((cni, _)) = &profile.cni {
        let name = format!("cni/{cni}");
        let layer = contexts
            .layer(&name)?
            .ok_or(format!("unknown CNI {cni:?}: no context {name}/"))?;
        context_layers.push((name, layer));
    }
    let cri_name = format!("cri/{}", profile.cri);
    let cri_layer = contexts.layer(&cri_name)?.ok_or(format!(
        "unknown CRI {:?}: no context {cri_name}/",
        profile.cri
    ))?;
    context_layers.push((cri_name, cri_layer));
    let base = contexts
        .layer("rootfs")?
        .ok_or("the contexts have no base rootfs/ folder")?;
    context_layers.push(("rootfs".into(), base));

    let source = match &params.remote {
        Some(options) => CacheSource::Remote(RemoteCache::open(options, &params.index_dir())?),
        None => CacheSource::Disk(params.cache.clone()),
    };
    let mut branches = arch_branches(params, &profile, &source)?;
    let missing = missing_entries(params, &profile, &sources, &source)?;
    check_missing(params, &profile, &missing)?;
    // --registry-data is a folder the user named; CACHE/registry is inside the cache.
    let registry = match &params.registry_data {
        Some(dir) => CacheSource::Disk(dir.clone()).tree("", false),
        None => source.tree("registry", false),
    }
    .map_err(|e| format!("cannot read {}: {e}", params.registry_dir().display()))?;
    if let Some(registry) = registry {
        branches.push(Branch {
            at: "rootfs/registry".into(),
            layer: registry,
        });
    }
    branches.push(Branch {
        at: "rootfs/registry".into(),
        layer: Arc::new(EmptyDir),
    });
    let budget = Arc::new(RenderBudget::default());
    for (_, layer) in context_layers {
        let templated = TemplatedTree::new(layer, vars.clone(), budget.clone());
        templated.check_all()?;
        branches.push(Branch {
            at: "rootfs".into(),
            layer: Arc::new(templated),
        });
    }
    let mut parameters = format!(
        "k8s={}\ncri={}\ncni={}\nsealer={}",
        profile.version,
        profile.cri,
        profile
            .cni
            .as_ref()
            .map_or("none", |(name, _)| name.as_str()),
        sealer.0
    );
    for (key, value) in &values {
        match value {
            Effective::Text(text) => parameters.push_str(&format!("\n{key}={text}")),
            Effective::Args(args) => {
                for (flag, v) in args {
                    parameters.push_str(&format!("\n{key}.{flag}={v}"));
                }
            }
        }
    }
    let layout = BuildLayout {
        profile,
        namespace: Namespace::new(branches),
        missing,
        parameters,
    };
    if !params.values.is_empty() {
        check_rendered_yaml(&layout)?;
    }
    Ok(layout)
}

/// With values set by the user, the YAML files they reach must still parse: a flag that
/// the image already sets, given again, would be a duplicate key.
fn check_rendered_yaml(layout: &BuildLayout) -> Result<(), String> {
    use serde::Deserialize;
    for path in ["rootfs/etc/kubeadm.yml", "rootfs/etc/custom-resources.yaml"] {
        let Some(node) = layout
            .namespace
            .resolve_path(Path::new(path))
            .map_err(|e| format!("{path}: {e}"))?
        else {
            continue;
        };
        let crate::layers::Content::Bytes(bytes) = node.entry.content else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        for doc in serde_yaml::Deserializer::from_str(&text) {
            serde_yaml::Value::deserialize(doc).map_err(|e| {
                format!(
                    "the values make {path} invalid YAML ({e}); a flag the image already sets cannot be set again: change it through --contexts"
                )
            })?;
        }
    }
    Ok(())
}

/// The values of a mount (contexts/values.yaml, `--registry-domain`, `--values`, `--set`),
/// checked; a chosen `cniVersion` replaces the profile's CNI release.
fn effective_values(
    contexts: &Contexts,
    params: &MountParams,
    facts: &VersionFacts,
    profile: &mut Profile,
) -> Result<Values, String> {
    let specs = contexts.data("values.yaml", ValueSpecs::parse)?;
    let releases = match &profile.cni {
        Some((cni, _)) => facts.cni_releases(cni, &profile.version),
        None => Vec::new(),
    };
    let names: Vec<String> = releases.iter().map(|r| r.version.clone()).collect();
    let mut overrides = vec![("registryDomain".to_string(), params.registry_domain.clone())];
    overrides.extend(params.values.iter().cloned());
    let values = specs.resolve(&overrides, &names)?;
    if let (Some((_, current)), Some(Effective::Text(chosen))) =
        (&mut profile.cni, values.get("cniVersion"))
    {
        if let Some(release) = releases.into_iter().find(|r| &r.version == chosen) {
            *current = release;
        }
    }
    Ok(values)
}

/// The effective values of a mount of `params`, for `rootfs-mount values`.
pub fn values(params: &MountParams) -> Result<Values, String> {
    let contexts = match &params.contexts {
        None => Contexts::Embedded,
        Some(dir) => Contexts::Disk(dir),
    };
    let facts = contexts.data("versions.yaml", VersionFacts::parse)?;
    let mut profile = facts.profile(&params.version, params.cri.as_deref(), &params.cni)?;
    effective_values(&contexts, params, &facts, &mut profile)
}

/// The value specifications (contexts/values.yaml) of the embedded contexts or `dir`.
pub fn value_specs(dir: Option<&Path>) -> Result<ValueSpecs, String> {
    match dir {
        None => Contexts::Embedded,
        Some(dir) => Contexts::Disk(dir),
    }
    .data("values.yaml", ValueSpecs::parse)
}

/// Where the cache's layout is read from: a folder, or an object store.
enum CacheSource {
    Disk(PathBuf),
    Remote(Arc<RemoteCache>),
}

impl CacheSource {
    /// The folder or file `rel` of the cache as a layer (`None` when absent); with
    /// `hide_tarballs`, its top-level `.tar.gz` files are left out.
    fn tree(&self, rel: &str, hide_tarballs: bool) -> std::io::Result<Option<Arc<dyn Layer>>> {
        Ok(match self {
            CacheSource::Disk(cache) => {
                let tree = if rel.is_empty() {
                    DiskTree::open(cache)?
                } else {
                    DiskTree::open_in(cache, Path::new(rel))?
                };
                let tree = if hide_tarballs {
                    tree.hiding_suffix(".tar.gz")
                } else {
                    tree
                };
                tree.exists().then(|| Arc::new(tree) as Arc<dyn Layer>)
            }
            CacheSource::Remote(remote) => {
                let tree = RemoteTree::new(remote.clone(), rel);
                let tree = if hide_tarballs {
                    tree.hiding_suffix(".tar.gz")
                } else {
                    tree
                };
                tree.exists().then(|| Arc::new(tree) as Arc<dyn Layer>)
            }
        })
    }

    fn tarball_members(&self, rel: &str, indexes: &Arc<IndexStore>) -> TarballMembers {
        match self {
            CacheSource::Disk(cache) => TarballMembers::new(cache, Path::new(rel), indexes.clone()),
            CacheSource::Remote(remote) => {
                TarballMembers::remote(remote.clone(), Path::new(rel), indexes.clone())
            }
        }
    }

    fn gunzipped(&self, rel: &str, name: &str, indexes: &Arc<IndexStore>) -> GunzippedFile {
        match self {
            CacheSource::Disk(cache) => {
                GunzippedFile::new(cache, Path::new(rel), name, indexes.clone())
            }
            CacheSource::Remote(remote) => {
                GunzippedFile::remote(remote.clone(), Path::new(rel), name, indexes.clone())
            }
        }
    }

    /// Whether the required entry `rel` is there as a regular file or folder: `Err`
    /// says why not.
    fn check_entry(&self, rel: &str) -> Result<(), String> {
        match self {
            CacheSource::Disk(cache) => {
                let found = DiskTree::open_in(cache, Path::new(rel))
                    .map_err(|e| format!("cannot read {}: {e}", cache.join(rel).display()))?;
                if !found.exists() {
                    Err(rel.to_string())
                } else if !found.is_usable() {
                    // A fifo, socket or device of that name is never shown: as good as missing.
                    Err(format!("{rel} (not a regular file)"))
                } else {
                    Ok(())
                }
            }
            CacheSource::Remote(remote) => {
                let path = Path::new(rel);
                if remote.is_file(path) || remote.is_dir(path) {
                    Ok(())
                } else {
                    Err(rel.to_string())
                }
            }
        }
    }
}

/// The `<arch>/` folders: kube binaries, the OSS cache and the CRI artifacts.
fn arch_branches(
    params: &MountParams,
    profile: &Profile,
    source: &CacheSource,
) -> Result<Vec<Branch>, String> {
    let cri = &profile.cri;
    let mut branches = Vec::new();
    // Indexed on first need, never at mount time; shared by every archive of the mount.
    let indexes = Arc::new(IndexStore::new(params.index_dir()));
    for arch in &params.arches {
        let cri_dir = format!("cri/{cri}/{arch}");
        let mut wanted: Vec<(String, String)> = KUBE_BINARIES
            .iter()
            .map(|bin| {
                (
                    format!("{arch}/bin/{bin}"),
                    format!("kube/{}/{arch}/{bin}", profile.version),
                )
            })
            .collect();
        wanted.push((format!("{arch}/bin"), format!("oss/{arch}/bin")));
        wanted.push((
            format!("{arch}/cri/{cri}.tar.gz"),
            format!("{cri_dir}/{cri}.tar.gz"),
        ));
        wanted.push((format!("{arch}/cri/lib64"), format!("{cri_dir}/lib64")));
        for (at, rel) in wanted {
            // Release tarballs in oss/<arch>/bin/ are shown through their members.
            let hide = at == format!("{arch}/bin");
            let layer = source
                .tree(&rel, hide)
                .map_err(|e| format!("cannot read {}: {e}", params.cache.join(&rel).display()))?;
            if let Some(layer) = layer {
                branches.push(Branch {
                    at: at.into(),
                    layer,
                });
            }
        }
        // Members of the release tarballs, below the plain files of oss/<arch>/bin/.
        branches.push(Branch {
            at: format!("{arch}/bin").into(),
            layer: Arc::new(source.tarball_members(&format!("oss/{arch}/bin"), &indexes)),
        });
        let registry = source.gunzipped(
            &format!("{cri_dir}/registry.tar.gz"),
            "registry.tar",
            &indexes,
        );
        // A symlink out of the cache refuses the mount here; absence is check_missing's.
        registry.probe()?;
        branches.push(Branch {
            at: format!("{arch}/images").into(),
            layer: Arc::new(registry),
        });
        for folder in ["bin", "cri", "images"] {
            branches.push(Branch {
                at: format!("{arch}/{folder}").into(),
                layer: Arc::new(EmptyDir),
            });
        }
    }
    Ok(branches)
}

/// The required cache entries (of `cache_entries`) that are not in the cache.
fn missing_entries(
    params: &MountParams,
    profile: &Profile,
    sources: &Sources,
    source: &CacheSource,
) -> Result<Vec<String>, String> {
    let mut missing: Vec<String> = Vec::new();
    for entry in cache_entries(sources, profile, &params.arches)? {
        if !entry.required {
            continue;
        }
        if let Err(why) = source.check_entry(&entry.path) {
            if why.starts_with("cannot read") {
                return Err(why);
            }
            missing.push(why);
        }
    }
    Ok(missing)
}

/// Refuses the mount when a required cache entry is missing (unless --allow-missing),
/// naming each one and, on its own line, the `fetch` command that fills them.
fn check_missing(
    params: &MountParams,
    profile: &Profile,
    missing: &[String],
) -> Result<(), String> {
    if params.allow_missing || missing.is_empty() {
        return Ok(());
    }
    let cache = &params.cache;
    Err(format!(
        "the cache {} lacks what {} with {} needs: {}; fill it with the command below (see README, \"fetch\"), make a demo cache with scripts/demo-cache.sh, or pass --allow-missing\n{}",
        cache.display(),
        profile.version,
        profile.cri,
        missing.join(", "),
        fetch_command(params, profile)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Content;
    use serde::Deserialize;

    fn params(version: &str, cri: Option<&str>) -> MountParams {
        let minor: u32 = version.split('.').nth(1).unwrap().parse().unwrap();
        // The bundled Calico needs v1.16+.
        MountParams::rendering(
            KubeVersion::parse(version).unwrap(),
            cri.map(str::to_string),
            if minor >= 16 { "calico" } else { "none" }.into(),
            None,
        )
    }

    fn rendered(layout: &BuildLayout, path: &str) -> String {
        let node = layout
            .namespace
            .resolve_path(Path::new(path))
            .unwrap()
            .unwrap_or_else(|| panic!("{path} missing"));
        match node.entry.content {
            Content::Bytes(b) => String::from_utf8(b.to_vec()).unwrap(),
            other => panic!("{path}: {other:?}"),
        }
    }

    /// Every template renders to valid YAML/TOML/JSON for every supported version and CRI.
    #[test]
    fn every_version_renders_valid_configs() {
        for minor in 13..=31 {
            for patch in [0, 7, 17] {
                let version = format!("v1.{minor}.{patch}");
                for cri in ["docker", "containerd"] {
                    if cri == "docker" && minor >= 24 {
                        assert!(plan(&params(&version, Some(cri)))
                            .unwrap_err()
                            .contains("dockershim"));
                        continue;
                    }
                    let layout = plan(&params(&version, Some(cri)))
                        .unwrap_or_else(|e| panic!("{version} {cri}: {e}"));
                    let mut files = vec!["rootfs/etc/kubeadm.yml", "rootfs/etc/kubeadm.yml.tmpl"];
                    if minor >= 16 {
                        files.push("rootfs/etc/tigera-operator.yaml");
                    }
                    for file in files {
                        // sealer renders the .tmpl at deploy time: do what it does first.
                        let text = rendered(&layout, file)
                            .replace(r#"{{or .RegistryURL "sea.hub:5000"}}"#, "sea.hub:5000");
                        assert!(
                            !text.contains("{{"),
                            "{version} {file}: unexpected Go template"
                        );
                        for doc in serde_yaml::Deserializer::from_str(&text) {
                            serde_yaml::Value::deserialize(doc)
                                .unwrap_or_else(|e| panic!("{version} {cri} {file}: {e}"));
                        }
                        assert!(
                            !text.contains("@{"),
                            "{version} {file}: unrendered variable"
                        );
                    }
                    let kubeadm = rendered(&layout, "rootfs/etc/kubeadm.yml");
                    // sealer fills a missing or empty key from its own defaults, which name
                    // gates and repositories that are wrong for many versions.
                    let cluster = serde_yaml::Deserializer::from_str(&kubeadm)
                        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
                        .find(|d| d["kind"] == "ClusterConfiguration")
                        .unwrap();
                    for component in ["apiServer", "controllerManager", "scheduler"] {
                        let gates = cluster[component]["extraArgs"]["feature-gates"]
                            .as_str()
                            .unwrap_or_default();
                        assert!(!gates.is_empty(), "{version}: {component} feature-gates");
                    }
                    assert!(cluster["dns"]["imageRepository"]
                        .as_str()
                        .is_some_and(|r| r.starts_with("sea.hub:5000")));
                    assert!(
                        kubeadm.contains(&format!("kubernetesVersion: {version}\n")),
                        "{version}"
                    );
                    assert!(rendered(&layout, "rootfs/imageList")
                        .contains(&format!("kube-proxy:{version}")));
                }
            }
        }
    }

    /// Every script a sealer generation runs exists in the tree, for every CRI.
    #[test]
    fn every_entry_point_script_is_in_the_tree() {
        let facts =
            SealerFacts::parse(crate::layers::embedded_file("sealer.yaml").unwrap()).unwrap();
        for generation in ["v0.9", "v0.8"] {
            let (_, g) = facts.generation(Some(generation)).unwrap();
            for (version, cri) in [("v1.23.4", "docker"), ("v1.24.0", "containerd")] {
                let mut p = params(version, Some(cri));
                p.sealer = Some(generation.into());
                let layout = plan(&p).unwrap();
                for entry in &g.entry_points {
                    let scripts = entry.scripts(cri);
                    assert!(!scripts.is_empty(), "{}", entry.run);
                    for script in scripts {
                        let path = format!("rootfs/scripts/{script}");
                        assert!(
                            layout
                                .namespace
                                .resolve_path(Path::new(&path))
                                .unwrap()
                                .is_some(),
                            "{generation} {cri}: {path} missing for `{}`",
                            entry.run
                        );
                    }
                }
            }
        }
    }
}
